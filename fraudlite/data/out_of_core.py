"""Out-of-core features: a Parquet file or directory of any size -> a feature store, in bounded memory.

The result equals ``features.offline.compute_features`` of the whole input held in memory, bit for bit:
every feature is either row-wise, or depends only on one customer's rows in (time, input order)
(``customer_block``), or on one terminal's rows and labels (``terminal_block``); those kernels are called
unchanged on partitions that hold whole customers (or terminals), and the kernels only use differences of
times within an entity, so a partition's own time origin changes nothing.

1. **scan** (``data.parquet_scan``): batches of the needed columns only, standardized like
   ``load_transactions``. Row-wise features go straight to a spill file in input order; ``day``, ``label``
   and the customer's hash to the store; each row's customer columns to the spill partition of its
   customer's hash, its terminal columns to that of its terminal's hash (Arrow IPC streams), its tx_id
   key to a key partition (duplicates are checked partition by partition).
2. **customers**, **terminals**: each partition through its kernel; the results (row position + values)
   are appended to position buckets (contiguous row ranges).
3. **assemble**: per bucket, row-wise + customer + terminal values into one float32 block, written to
   ``features.npy`` in input order (``data.feature_store``).

``memory_limit`` (``--memory-limit``) decides the partition count, the scan batch and the bucket size
(:class:`Plan`); the peaks per row below were measured (tracemalloc and RSS). A partition holds whole
customers, so one customer larger than a partition makes that partition larger (logged). Progress is
logged per stage with the rate and ETA. Spill files live inside the store's temporary directory, which
becomes the store atomically, or disappears on error.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fraudlite.data.feature_store import FeatureStore, NpyWriter
from fraudlite.data.parquet_scan import count_rows, duplicate_ids, id_hashes, input_files, scan
from fraudlite.errors import ConfigError, DataError
from fraudlite.features.extras import encode_extras
from fraudlite.features.offline import (
    TransactionArrays,
    block_names,
    customer_block,
    row_block,
    terminal_block,
)
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec, terminal_bit

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "IN_MEMORY_ROW_BYTES",
    "BASE_BYTES",
    "parse_memory",
    "Plan",
    "Progress",
    "build_feature_store",
]

logger = logging.getLogger(__name__)

MiB = 2**20
DEFAULT_MEMORY_LIMIT = 2 * 2**30
IN_MEMORY_ROW_BYTES = 1_000  # the in-memory train's peak RSS per transaction (measured: ~960 B)
BASE_BYTES = 512 * MiB  # interpreter, numpy, pandas, pyarrow, torch: resident before any data
PARTITION_ROW_BYTES = 640  # a partition's Arrow table, arrays and kernel temporaries (kernel peak ~243 B)
SCAN_ROW_BYTES = 1_500  # a scanned batch: Arrow columns, pandas views, ids, hashes, row features
MAX_PARTITIONS = 256


def parse_memory(text: str | int) -> int:
    """``2G``, ``1.5GB``, ``1500M``, ``800MiB`` or a number of bytes -> bytes; ConfigError otherwise."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not m:
        raise ConfigError(f"--memory-limit: expected a size like 2G, 1500M or 800MiB, got {text!r}")
    value = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")
    return int(value)


@dataclass(frozen=True)
class Plan:
    """How a build fits in ``memory_limit``: spill partitions, scan batch and assembly bucket, in rows."""

    rows: int
    memory_limit: int
    partitions: int
    partition_rows: int
    batch_rows: int
    bucket_rows: int

    @classmethod
    def for_rows(cls, rows: int, memory_limit: int, n_features: int) -> Plan:
        budget = memory_limit - BASE_BYTES
        if budget < 64 * MiB:
            raise ConfigError(
                f"--memory-limit {memory_limit / MiB:,.0f} MiB is too small: at least "
                f"{(BASE_BYTES + 64 * MiB) / MiB:,.0f} MiB (the process itself takes ~{BASE_BYTES / MiB:,.0f})"
            )
        # Hash partitions vary around their mean: aim 20% below the budget.
        partitions = min(MAX_PARTITIONS, max(1, math.ceil(1.2 * rows * PARTITION_ROW_BYTES / budget)))
        batch_rows = int(np.clip(budget // SCAN_ROW_BYTES, 4_096, 1 << 20))
        bucket_rows = max(4_096, budget // (8 * n_features + 96))
        return cls(rows, memory_limit, partitions, budget // PARTITION_ROW_BYTES, batch_rows, bucket_rows)


class Progress:
    """One log line per stage at most every ``every`` seconds, and one at its end: rows, rate, ETA."""

    def __init__(self, stage: str, total: int, say: Callable[[str], None], every: float = 10.0) -> None:
        self.stage, self.total, self.say, self.every = stage, total, say, every
        self.done, self.t0 = 0, time.perf_counter()
        self.last = self.t0

    def tick(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            self.say(
                f"{self.stage} {self.done:,}/{self.total:,} rows ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:,.0f} rows/s, eta {eta:.0f} s"
            )

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def _row_features(spec: FeatureSpec, chunk) -> np.ndarray:
    """The row-wise inputs of a chunk (``row_block``, then the extra columns'), float32."""
    n = len(chunk)
    zeros = np.zeros(n, dtype=np.int64)
    values = row_block(spec, TransactionArrays(chunk.ts, zeros, zeros, zeros, chunk.amount_cents))
    names = block_names(spec)[0]
    out = np.empty((n, len(names) + spec.n_features - spec.n_builtin_features), dtype=np.float32)
    for j, name in enumerate(names):
        out[:, j] = values.pop(name)  # float64 -> float32 as compute_features casts
    if spec.extra_columns:
        out[:, len(names) :] = encode_extras(spec.extra_columns, chunk.extras, n)
    return out


class _Spill:
    """``n`` Arrow IPC streams, one per partition, appended batch by batch."""

    def __init__(self, folder: Path, n: int, schema: pa.Schema) -> None:
        folder.mkdir()
        self.paths = [folder / f"{p:04d}.arrows" for p in range(n)]
        self.writers = [pa.ipc.new_stream(pa.OSFile(str(path), "wb"), schema) for path in self.paths]
        self.rows = np.zeros(n, dtype=np.int64)

    def add(self, part: np.ndarray, table: pa.Table) -> None:
        order = np.argsort(part, kind="stable")  # stable: each partition keeps input order
        bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=len(self.writers)))])
        for p, writer in enumerate(self.writers):
            if bounds[p + 1] > bounds[p]:
                writer.write_table(table.take(pa.array(order[bounds[p] : bounds[p + 1]])))
        self.rows += np.diff(bounds)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def read(self, p: int) -> pa.Table:
        with pa.OSFile(str(self.paths[p]), "rb") as f:
            table = pa.ipc.open_stream(f).read_all().combine_chunks()
        self.paths[p].unlink()
        return table


class _Buckets:
    """(row position, values) records appended to the file of their position range."""

    def __init__(self, folder: Path, rows: int, bucket_rows: int, width: int) -> None:
        folder.mkdir()
        self.folder, self.bucket_rows = folder, bucket_rows
        self.n = max(1, math.ceil(rows / bucket_rows))
        self.dtype = np.dtype([("pos", "<i8"), ("v", "<f4", (width,))])

    def add(self, pos: np.ndarray, values: np.ndarray) -> None:
        """``pos`` ascending (a partition is in input order)."""
        rec = np.empty(len(pos), dtype=self.dtype)
        rec["pos"], rec["v"] = pos, values
        bounds = np.searchsorted(pos, np.arange(self.n + 1) * self.bucket_rows)
        for b in np.flatnonzero(np.diff(bounds)):
            with open(self.folder / f"{b:05d}.rec", "ab") as f:
                rec[bounds[b] : bounds[b + 1]].tofile(f)

    def take(self, b: int) -> np.ndarray:
        path = self.folder / f"{b:05d}.rec"
        if not path.exists():
            return np.empty(0, dtype=self.dtype)
        rec = np.fromfile(path, dtype=self.dtype)
        path.unlink()
        return rec


def _codes(ids: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Ids -> (int64 codes into the distinct values, the distinct values)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    encoded = pc.dictionary_encode(ids)
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary


def build_feature_store(
    source: str | os.PathLike,
    spec: FeatureSpec,
    out: str | os.PathLike,
    columns: dict[str, str] | None = None,
    require_label: bool = True,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    progress: Callable[[str], None] | None = None,
    plan: Plan | None = None,
) -> FeatureStore:
    """Features of every row of ``source`` (a .parquet file or a directory of them) into a store at ``out``.

    Args:
        source: the transactions (see ``data.parquet_scan`` for a directory's order).
        spec: the (fitted) feature spec; its extra columns are read by name.
        out: the store directory to write (atomically; an existing one is replaced).
        columns: ``--columns``.
        require_label: a missing label column is an error (without one, terminal risk is 0).
        memory_limit: bytes the whole process should stay under (see :class:`Plan`).
        progress: called with each progress line (default: this module's logger).
        plan: partitions, batch and bucket sizes instead of ``Plan.for_rows(rows, memory_limit, ...)``.

    Raises:
        DataError: as ``load_transactions`` (file and rows named), duplicate ids, an empty input.
        ConfigError: a memory limit too small to work in.
    """
    say = progress or (lambda msg: logger.info("features: %s", msg))
    files = input_files(source)
    rows = count_rows(files)
    if rows == 0:
        raise DataError(f"{source}: no rows")
    plan = replace(plan, rows=rows) if plan else Plan.for_rows(rows, memory_limit, spec.n_features)
    say(
        f"{rows:,} rows in {len(files)} file(s); memory limit {memory_limit / MiB:,.0f} MiB -> "
        f"{plan.partitions} partition(s) of ~{rows // plan.partitions:,} rows (at most {plan.partition_rows:,}), "
        f"batches of {plan.batch_rows:,}, buckets of {plan.bucket_rows:,}"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        stats = _build(files, spec, tmp, plan, columns, require_label, say)
        FeatureStore.write_meta(tmp, rows, spec, stats.pop("has_label"), [str(f) for f in files], build=stats)
        shutil.rmtree(tmp / "spill")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FeatureStore.open(out)


def _build(files, spec: FeatureSpec, tmp: Path, plan: Plan, columns, require_label: bool, say) -> dict:
    spill = tmp / "spill"
    spill.mkdir()
    P, n = plan.partitions, plan.rows
    cust_schema = pa.schema([("pos", pa.int64()), ("ts", pa.int64()), ("id", pa.large_string()),
                             ("bit", pa.int8()), ("cents", pa.int64())])  # fmt: skip
    term_fields = [("pos", pa.int64()), ("ts", pa.int64()), ("id", pa.large_string())]
    n_row = len(block_names(spec)[0]) + spec.n_features - spec.n_builtin_features
    sidecars = {"day": NpyWriter(tmp / "day.npy", np.int32, (n,)),
                "customer": NpyWriter(tmp / "customer.npy", np.int64, (n,))}  # fmt: skip
    customers = terminals = None
    keys = [open(spill / f"key{p:04d}.u64", "wb") for p in range(P)]  # noqa: SIM115 - closed below
    timing: dict[str, float] = {}
    try:
        with open(spill / "rows.f32", "wb") as row_file:
            progress = Progress("scan", n, say)
            for chunk in scan(files, columns, require_label, spec.extra_columns, plan.batch_rows):
                if terminals is None:
                    has_label = chunk.label is not None
                    if has_label:
                        sidecars["label"] = NpyWriter(tmp / "label.npy", np.int8, (n,))
                    schema = pa.schema(term_fields + ([("label", pa.int8())] if has_label else []))
                    customers, terminals = _Spill(spill / "c", P, cust_schema), _Spill(spill / "t", P, schema)
                elif has_label != (chunk.label is not None):
                    raise DataError(
                        f"{chunk.file}: {'no' if has_label else 'a'} label column, unlike the first file"
                    )
                _scan_chunk(spec, chunk, P, row_file, sidecars, customers, terminals, keys)
                progress.tick(len(chunk))
            timing["scan"] = progress.seconds
    finally:
        for f in keys:
            f.close()
        for writer in (customers, terminals):
            if writer is not None:
                writer.close()
    for writer in sidecars.values():
        writer.close()  # DataError if the files held other row counts than their footers said
    _check_duplicates(files, columns, spill, P)
    widths = [len(names) for names in block_names(spec)[1:]]
    max_rows, buckets = {}, {}
    for kind, parts, kernel, width in (("customers", customers, _customer_values, widths[0]),
                                       ("terminals", terminals, _terminal_values, widths[1])):  # fmt: skip
        buckets[kind] = _Buckets(spill / f"b{kind}", n, plan.bucket_rows, width)
        progress = Progress(kind, n, say)
        for p in range(P):
            table = parts.read(p)
            if len(table):
                buckets[kind].add(table.column("pos").to_numpy(), kernel(spec, table))
                progress.tick(len(table))
            del table
        biggest = int(parts.rows.max())
        if biggest > plan.partition_rows:
            say(
                f"{kind}: a partition of {biggest:,} rows exceeds the plan's {plan.partition_rows:,} (large entities)"
            )
        max_rows[kind], timing[kind] = biggest, progress.seconds
    timing["assemble"] = _assemble(
        spec, tmp, spill / "rows.f32", n, n_row, buckets["customers"], buckets["terminals"], say
    )
    return {"has_label": "label" in sidecars, "plan": asdict(plan), "max_partition_rows": max_rows,
            "seconds": {k: round(v, 2) for k, v in timing.items()}}  # fmt: skip


def _scan_chunk(spec, chunk, P: int, row_file, sidecars, customers: _Spill, terminals: _Spill, keys) -> None:
    n = len(chunk)
    pos = np.arange(chunk.start, chunk.start + n, dtype=np.int64)
    _row_features(spec, chunk).tofile(row_file)
    sidecars["day"].write(chunk.ts // SECONDS_PER_DAY)
    if chunk.label is not None:
        sidecars["label"].write(chunk.label)
    codes, distinct = _codes(chunk.customer)
    customer_hash = id_hashes(distinct)[codes]
    sidecars["customer"].write(customer_hash.view(np.int64))
    t_codes, t_distinct = _codes(chunk.terminal)
    bits = np.array([terminal_bit(t, spec.bloom_bits) for t in t_distinct.to_pylist()], dtype=np.int8)
    customers.add(
        (customer_hash % P).astype(np.int64),
        pa.table({"pos": pos, "ts": chunk.ts, "id": chunk.customer.cast(pa.large_string()),
                  "bit": bits[t_codes], "cents": chunk.amount_cents}),
    )  # fmt: skip
    term = {"pos": pos, "ts": chunk.ts, "id": chunk.terminal.cast(pa.large_string())}
    if chunk.label is not None:
        term["label"] = chunk.label
    terminals.add((id_hashes(t_distinct)[t_codes] % P).astype(np.int64), pa.table(term))
    key_part = (chunk.tx_key % np.uint64(P)).astype(np.int64)
    order = np.argsort(key_part, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(key_part, minlength=P))])
    sorted_keys = chunk.tx_key[order]
    for p in np.flatnonzero(np.diff(bounds)):
        sorted_keys[bounds[p] : bounds[p + 1]].tofile(keys[p])


def _check_duplicates(files, columns, spill: Path, P: int) -> None:
    """tx_id keys partition by partition; rows sharing one are looked up by their ids (DataError)."""
    repeated = []
    for p in range(P):
        path = spill / f"key{p:04d}.u64"
        k = np.sort(np.fromfile(path, dtype=np.uint64))
        path.unlink()
        repeated.append(np.unique(k[1:][k[1:] == k[:-1]]))
    repeated = np.concatenate(repeated)
    if len(repeated):
        duplicate_ids(files, columns, repeated)


def _customer_values(spec: FeatureSpec, table: pa.Table) -> np.ndarray:
    m = len(table)
    codes, _ = _codes(table.column("id"))
    tx = TransactionArrays(
        ts=table.column("ts").to_numpy(),
        customer=codes,
        terminal=np.zeros(m, dtype=np.int64),
        terminal_bit=table.column("bit").to_numpy().astype(np.int64),
        amount_cents=table.column("cents").to_numpy(),
    )
    position = table.column("pos").to_numpy()  # ties in time: input order, whatever the partition's
    return _values(spec, tx, lambda spec, tx: customer_block(spec, tx, position), block_names(spec)[1])


def _terminal_values(spec: FeatureSpec, table: pa.Table) -> np.ndarray:
    m = len(table)
    codes, _ = _codes(table.column("id"))
    zeros = np.zeros(m, dtype=np.int64)
    label = table.column("label").to_numpy() if "label" in table.column_names else None
    tx = TransactionArrays(table.column("ts").to_numpy(), zeros, codes, zeros, zeros, label)
    return _values(spec, tx, terminal_block, block_names(spec)[2])


def _values(spec: FeatureSpec, tx: TransactionArrays, block, names: list[str]) -> np.ndarray:
    out = block(spec, tx)
    values = np.empty((len(tx), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        values[:, j] = out.pop(name)  # float64 -> float32 as compute_features casts
    return values


def _assemble(
    spec, tmp: Path, row_path: Path, n: int, n_row: int, cust: _Buckets, term: _Buckets, say
) -> float:
    """Per bucket: row-wise, customer and terminal values into one block, appended in input order."""
    writer = NpyWriter(tmp / "features.npy", np.float32, (n, spec.n_features))
    n_rowwise, n_customer, n_terminal = (len(names) for names in block_names(spec))
    nb = spec.n_builtin_features
    progress = Progress("assemble", n, say)
    with open(row_path, "rb") as rows:
        for b in range(cust.n):
            start, stop = b * cust.bucket_rows, min(n, (b + 1) * cust.bucket_rows)
            m = stop - start
            block = np.empty((m, spec.n_features), dtype=np.float32)
            row_values = np.fromfile(rows, dtype=np.float32, count=m * n_row).reshape(m, n_row)
            block[:, :n_rowwise], block[:, nb:] = row_values[:, :n_rowwise], row_values[:, n_rowwise:]
            for buckets, first, width in (
                (cust, n_rowwise, n_customer),
                (term, n_rowwise + n_customer, n_terminal),
            ):
                rec = buckets.take(b)
                if len(rec) != m:
                    raise DataError(f"internal: bucket {b} holds {len(rec)} of its {m} rows")
                block[rec["pos"] - start, first : first + width] = rec["v"]
            writer.write(block)
            progress.tick(m)
    writer.close()
    return progress.seconds
