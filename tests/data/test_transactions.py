"""Loading and validation: every user error names what is wrong."""

import numpy as np
import pandas as pd
import pytest

from fraudlite.data.transactions import load_transactions, parse_day, window_mask, write_table
from fraudlite.errors import ConfigError, DataError


def _frame(n=5):
    return pd.DataFrame(
        {
            "tx_id": [f"x{i}" for i in range(n)],
            "timestamp": pd.date_range("2026-03-01", periods=n, freq="h").astype(str),
            "customer_id": ["c1", "c2"] * (n // 2) + ["c1"] * (n % 2),
            "terminal_id": ["t1"] * n,
            "amount": np.linspace(1, 50, n),
            "label": [0, 1] * (n // 2) + [0] * (n % 2),
        }
    )


@pytest.fixture(params=["csv", "parquet"])
def write(request, tmp_path):
    def _write(df, name="tx"):
        path = tmp_path / f"{name}.{request.param}"
        df.to_csv(path, index=False) if request.param == "csv" else df.to_parquet(path, index=False)
        return path

    return _write


def test_loads_standard_frame(write):
    df = load_transactions(write(_frame()))
    assert list(df.columns) == ["tx_id", "customer_id", "terminal_id", "ts", "amount", "label"]
    assert df["ts"].dtype == np.int64 and df["label"].dtype == np.int8
    assert df["ts"].iloc[1] - df["ts"].iloc[0] == 3600


def test_column_mapping(write):
    raw = _frame().rename(columns={"amount": "amt_eur", "timestamp": "when"})
    df = load_transactions(write(raw), {"amount": "amt_eur", "timestamp": "when"})
    assert df["amount"].iloc[-1] == pytest.approx(50)


def test_mapped_column_missing_is_named(write):
    with pytest.raises(DataError, match=r"'nope' \(mapped from 'amount'"):
        load_transactions(write(_frame()), {"amount": "nope"})


def test_unknown_logical_column_is_named(write):
    with pytest.raises(ConfigError, match="unknown logical column.*'amout'"):
        load_transactions(write(_frame()), {"amout": "amount"})


def test_missing_column_is_named(write):
    with pytest.raises(DataError, match="missing column 'terminal_id'"):
        load_transactions(write(_frame().drop(columns="terminal_id")))


def test_missing_label_only_when_required(write):
    path = write(_frame().drop(columns="label"))
    assert "label" not in load_transactions(path)
    with pytest.raises(DataError, match="missing column 'label'"):
        load_transactions(path, require_label=True)


def test_unparsable_timestamps_count_and_rows(write):
    raw = _frame()
    raw.loc[[1, 3], "timestamp"] = ["yesterday", "13/45/2026 99:00"]
    with pytest.raises(DataError, match=r"'timestamp'.*2 row\(s\), first: 2 \('yesterday'\), 4"):
        load_transactions(write(raw))


def test_epoch_seconds_and_milliseconds(write):
    raw = _frame()
    raw["timestamp"] = [1_767_225_600 + i for i in range(5)]
    assert load_transactions(write(raw))["ts"].iloc[0] == 1_767_225_600
    raw["timestamp"] = [1_767_225_600_000 + 1000 * i for i in range(5)]
    assert load_transactions(write(raw))["ts"].iloc[4] == 1_767_225_604


@pytest.mark.parametrize(
    "value, message",
    [("abc", "non-numeric amounts"), (np.nan, "missing or non-numeric"), (-3.0, "negative amounts")],
)
def test_bad_amounts(write, value, message):
    raw = _frame()
    raw["amount"] = raw["amount"].astype(str if isinstance(value, str) else float)
    raw.loc[2, "amount"] = value
    with pytest.raises(DataError, match=rf"'amount'.*{message}.*first: 3"):
        load_transactions(write(raw))


def test_labels_other_than_0_1(write):
    raw = _frame()
    raw.loc[4, "label"] = 2
    with pytest.raises(DataError, match=r"labels must be 0 or 1.*first: 5"):
        load_transactions(write(raw))


def test_duplicate_tx_id(write):
    raw = _frame()
    raw.loc[3, "tx_id"] = "x0"
    with pytest.raises(DataError, match=r"duplicate ids.*first: 4 \('x0'\)"):
        load_transactions(write(raw))


def test_empty_file_and_bad_extension(tmp_path, write):
    with pytest.raises(DataError, match="no rows"):
        load_transactions(write(_frame().iloc[:0]))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="unsupported file type"):
        load_transactions(tmp_path / "x.json")
    with pytest.raises(DataError, match="no such file"):
        load_transactions(tmp_path / "missing.csv")


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="bad.parquet"):
        load_transactions(path)


def test_windows_and_days(write):
    df = load_transactions(write(_frame()))
    day = parse_day("2026-03-01", "--start")
    assert window_mask(df, day, day, "w").all()
    with pytest.raises(DataError, match="holds no transactions"):
        window_mask(df, day + 5, day + 6, "evaluation window")
    with pytest.raises(ConfigError, match="--start: expected a date"):
        parse_day("March 1st", "--start")


def test_write_table_is_atomic_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "o.csv"
    write_table(_frame(), out)
    assert len(pd.read_csv(out)) == 5

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(OSError, match="disk full"):
        write_table(_frame(), tmp_path / "p.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv"]
