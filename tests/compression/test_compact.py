"""The entropy-coded compact artifact: bit-exact round trips (hypothesis), coders, corruption, no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudlite.compression.compact import (
    BitReader,
    BitWriter,
    compact_breakdown,
    decode_compact,
    decode_ints,
    encode_compact,
    encode_ints,
    huffman_code_lengths,
    round_floats,
)
from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError, ModelDirError

FLOAT_KINDS = ("fp32", "fp16", "bf16")


def _floats(rng: np.random.Generator, shape, kind: str, scale: float = 1.0) -> np.ndarray:
    a = (rng.standard_normal(shape) * scale).astype(np.float32)
    if kind == "fp16":
        return a.astype(np.float16).astype(np.float32)
    if kind == "bf16":
        return (a.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    return a


@st.composite
def compressed_mlps(draw) -> CompressedMLP:
    """Random shapes, sparsity (0..1 inclusive), codebooks (k 1..256, skewed or uniform), per-row integer
    grids (qmax 1..127, scales float32 or not), float kinds."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_features = draw(st.integers(1, 24))
    hidden = draw(st.lists(st.integers(1, 40), min_size=0, max_size=3))
    widths = [n_features, *hidden, 1]
    kind = draw(st.sampled_from(FLOAT_KINDS))
    layers, masks, codebooks, grids = [], [], [], []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        masked = draw(st.booleans())
        density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]))
        mask = rng.random((b, a)) < density if masked else None
        grid = None
        kind_of_layer = draw(st.sampled_from(["codebook", "floats", "grid"]))
        if kind_of_layer == "grid":
            qmax = draw(st.sampled_from([1, 3, 7, 127]))
            scales = np.abs(_floats(rng, b, kind)) + np.float32(0.01)
            codes = rng.integers(-qmax, qmax + 1, (b, a)).astype(np.float32)
            w = (codes * scales[:, None]).astype(np.float32) + np.float32(0)
            if mask is not None:
                w = np.where(mask, w, np.float32(0))
            exact = draw(st.booleans())  # else the scales are not float32 values (stay in the trailer)
            grid = {"weight_scale": [float(x) + (0.0 if exact else 1e-12) for x in scales], "bits": 8,
                    "weight_qmax": qmax}  # fmt: skip
            if not exact:
                w = np.zeros_like(w)  # the inexact scales would not reproduce w; zeros do
            cb = None
        elif kind_of_layer == "codebook":
            k = draw(st.sampled_from([1, 2, 5, 16, 33, 256]))
            centroids = np.sort(_floats(rng, k, kind))
            p = rng.dirichlet(np.full(k, draw(st.sampled_from([0.2, 1.0, 10.0]))))
            idx = rng.choice(k, size=(b, a), p=p).astype(np.uint8)
            if mask is not None:
                idx[~mask] = 0
            w = centroids[idx.astype(np.intp)]
            if mask is not None:
                w = np.where(mask, w, np.float32(0))
            cb = (centroids, idx)
        else:
            w = _floats(rng, (b, a), kind)
            if mask is not None:
                w = np.where(mask, w, np.float32(0))
            cb = None
        layers.append((w.astype(np.float32), _floats(rng, b, kind)))
        masks.append(mask)
        codebooks.append(cb)
        grids.append(grid)
    mean = _floats(rng, n_features, kind, 10.0)
    std = np.abs(_floats(rng, n_features, kind)) + np.float32(0.5)
    if kind == "fp16":
        std = std.astype(np.float16).astype(np.float32)
    quant = None
    if draw(st.booleans()) or any(g is not None for g in grids):
        quant = [
            {"weight_scale": [0.01] * w.shape[0], "input_scale": 0.02, "bits": 8, **(g or {})}
            for (w, _), g in zip(layers, grids, strict=True)
        ]
    stages = [{"name": "prune", "params": {"sparsity": 0.5}}] if draw(st.booleans()) else []
    return CompressedMLP(layers, mean, std, masks, codebooks, quant, stages)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(compressed_mlps(), st.booleans())
def test_round_trip_is_bit_exact(c: CompressedMLP, keep_stages: bool) -> None:
    data = encode_compact(c, keep_stages=keep_stages)
    back = decode_compact(data)
    expected = c if keep_stages else CompressedMLP(c.layers, c.mean, c.std, c.masks, c.codebooks, c.quant, [])
    assert back.equals(expected)
    assert encode_compact(back, keep_stages=keep_stages) == data  # deterministic, canonical


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 5000), min_size=0, max_size=300),
    st.sampled_from([None, 8, 16, 256]),
)
def test_integer_streams_round_trip(values: list[int], alphabet: int | None) -> None:
    if alphabet is not None:
        values = [v % alphabet for v in values]
    w = BitWriter()
    encode_ints(w, values, alphabet=alphabet)
    w.write(0b101, 3)  # a sentinel right after the stream: the reader must stop exactly at its end
    r = BitReader(w.getvalue())
    assert decode_ints(r, len(values), alphabet=alphabet).tolist() == values
    assert r.read(3) == 0b101


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, 1000), st.integers(1, 10**6), min_size=1, max_size=200))
def test_huffman_lengths_form_a_prefix_code(counts: dict[int, int]) -> None:
    lengths = huffman_code_lengths(counts)
    assert set(lengths) == set(counts)
    if len(counts) == 1:
        assert list(lengths.values()) == [0]
    else:
        assert max(lengths.values()) <= 15
        assert sum(2.0**-n for n in lengths.values()) <= 1.0 + 1e-12


def test_length_limit_on_fibonacci_counts() -> None:
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman_code_lengths(dict(enumerate(fib)))
    assert max(lengths.values()) <= 15
    assert sum(2.0**-n for n in lengths.values()) <= 1.0


def test_each_coder_is_chosen_where_it_wins() -> None:
    rng = np.random.default_rng(0)
    cases = {
        "rice": rng.geometric(0.1, 2000) - 1,  # gaps of random pruning: geometric
        "huffman": rng.choice(16, 2000, p=np.r_[0.7, np.full(15, 0.02)]),  # skewed indices
        "fixed": rng.integers(0, 16, 2000),  # uniform 4-bit
    }
    for expected, values in cases.items():
        assert encode_ints(BitWriter(), values, alphabet=16 if expected != "rice" else None) == expected


def test_pruned_clustered_model_is_far_smaller_than_fp32(make_state) -> None:
    from fraudlite.compression.cluster import apply_clustering, compute_codebooks

    state = round_floats(make_state(hidden=(64, 32), sparsity=0.9))
    clustered = round_floats(apply_clustering(state, compute_codebooks(state)))
    data = encode_compact(clustered)
    assert decode_compact(data).equals(CompressedMLP(clustered.layers, clustered.mean, clustered.std,
                                                     clustered.masks, clustered.codebooks))  # fmt: skip
    assert len(data) * 20 < clustered.fp32_bytes()  # biases and stats (fp16) are most of the rest
    parts = compact_breakdown(clustered)
    assert abs(sum(parts.values()) - len(data)) <= 16  # the breakdown accounts for the artifact


def test_round_floats_halves_float_storage(make_state) -> None:
    state = make_state(hidden=(16, 8))
    rounded = round_floats(state)
    assert len(encode_compact(rounded)) < 0.55 * len(encode_compact(state))
    assert np.array_equal(round_floats(rounded, "float32").layers[0][0], rounded.layers[0][0])
    with pytest.raises(ConfigError):
        round_floats(state, "float8")


def test_negative_zero_in_a_pruned_entry_is_refused(make_state) -> None:
    state = make_state(hidden=(8,), sparsity=0.5)
    w, b = state.layers[0]
    w = w.copy()
    w[~state.masks[0]] = -0.0
    bad = CompressedMLP([(w, b), state.layers[1]], state.mean, state.std, state.masks, state.codebooks)
    with pytest.raises(ConfigError, match="round-trip"):
        encode_compact(bad)


def test_corrupt_and_truncated_artifacts_raise_model_dir_error(make_state) -> None:
    data = encode_compact(make_state(hidden=(16, 8), sparsity=0.6))
    with pytest.raises(ModelDirError, match="magic"):
        decode_compact(b"XYZ" + data[3:])
    with pytest.raises(ModelDirError, match="version"):
        decode_compact(data[:3] + b"\x09" + data[4:])
    for cut in range(4, len(data) - 1, max(1, len(data) // 25)):
        with pytest.raises(ModelDirError):
            decode_compact(data[:cut])


def test_decoding_needs_neither_torch_nor_pandas(make_state, tmp_path) -> None:
    path = tmp_path / "model.flc"
    path.write_bytes(encode_compact(make_state(hidden=(8, 4), sparsity=0.5)))
    code = (
        "import sys\n"
        "from fraudlite.compression.compact import decode_compact\n"
        f"c = decode_compact(open({str(path)!r}, 'rb').read())\n"
        "print(c.hidden, c.predict_proba(__import__('numpy').zeros((2, c.n_features), 'float32')).shape)\n"
        "heavy = [m for m in ('torch', 'pandas', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "(8, 4) (2,)" in out.stdout


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=0, max_size=80),
    st.sampled_from(FLOAT_KINDS),
    st.booleans(),
    st.integers(0, 10),
)
def test_float_arrays_round_trip_sorted_or_not(values: list[float], kind: str, sort: bool, bits: int) -> None:
    from fraudlite.compression.compact import _read_floats, _write_floats
    from fraudlite.compression.compact import round_to_float16 as round_half

    a = np.array(values, dtype=np.float32)
    if kind == "fp16":  # with 0..10 mantissa bits: the encoder drops the zero low bits
        a = round_half(a, bits)
    elif kind == "bf16":
        a = (a.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    if sort:
        a = np.sort(a)
    w = BitWriter()
    _write_floats(w, a)
    w.write(0b11, 2)
    r = BitReader(w.getvalue())
    assert _read_floats(r, len(a)).tobytes() == a.tobytes()
    assert r.read(2) == 0b11


def test_sorted_codebooks_cost_less_than_raw_words() -> None:
    from fraudlite.compression.compact import _write_floats

    centroids = np.linspace(-0.4, 0.6, 30).astype(np.float16).astype(np.float32)
    w = BitWriter()
    _write_floats(w, centroids)
    assert w.n_bits < 0.85 * 16 * len(centroids)


def test_floats_with_fewer_mantissa_bits_cost_fewer_bits() -> None:
    from fraudlite.compression.compact import _write_floats
    from fraudlite.compression.compact import round_to_float16 as round_half

    raw = np.random.default_rng(3).standard_normal(40).astype(np.float32)
    cost = {}
    for bits in (10, 7, 4):
        w = BitWriter()
        _write_floats(w, round_half(raw, bits))
        cost[bits] = w.n_bits
    # unsorted: 2-bit tag + the zero-bit count + (6 + bits) bits per value
    assert cost[10] == 2 + 1 + 16 * 40
    assert cost[4] <= 2 + 7 + 10 * 40
    assert cost[4] < cost[7] < cost[10]


# written by format version 1 (before floats dropped their zero low bits): a [3, 4, 1] model, layer 0
# 40% pruned, k = 3 codebooks, fp16 floats. Registries may hold such artifacts; they still decode.
_V1_ARTIFACT = bytes.fromhex(
    "464c63011326c0000027c0068008401a42cd5be933fc58e6741d41b73fa6fac7ab880c5b63ca5006dfcddea25ba920b2"
)


def test_format_version_1_artifacts_still_decode() -> None:
    back = decode_compact(_V1_ARTIFACT)
    assert back.hidden == (4,) and back.n_features == 3
    assert back.layers[1][0].tolist() == [[-1.31640625, -0.45751953125, -1.9013671875, -1.31640625]]
    assert back.std.tolist() == [1.5, 0.25, 3.0]
    assert back.masks[0].sum() == 6
    np.testing.assert_allclose(back.logits(np.float32([[1, 2, 3]])), [-23.741798], rtol=1e-6)
    assert encode_compact(back)[3] == 4  # re-encoding writes the current format
    assert decode_compact(encode_compact(back)).equals(back)


def test_qat_layers_ship_as_integers_on_their_grid(make_state) -> None:
    """A layer snapped to its per-row int8 grid costs ~8 bits per weight, not a float each; bit-exact."""
    from fraudlite.compression.qat import compute_weight_scales, snap_to_grid

    c = make_state(hidden=(32, 16), sparsity=0.5)
    layers, quant = [], []
    for (w, b), mask in zip(c.layers, c.masks, strict=True):
        scale = compute_weight_scales(w, per_channel=True)
        snapped = snap_to_grid(w, scale)
        layers.append((snapped if mask is None else np.where(mask, snapped, np.float32(0)), b))
        quant.append({"weight_scale": [float(x) for x in scale], "bits": 8})
    q = CompressedMLP(layers, c.mean, c.std, c.masks, quant=quant)
    floats = CompressedMLP(layers, c.mean, c.std, c.masks, quant=[{"bits": 8}] * len(layers))
    assert decode_compact(encode_compact(q)).equals(q)
    assert len(encode_compact(q)) < 0.75 * len(encode_compact(floats))


# written by format version 3 (int8 grids, their scales in the quantization trailer): a [3, 4, 1] model,
# both layers snapped to per-row int8 grids, fp16 stats and biases.
_V3_ARTIFACT = bytes.fromhex(
    "464c630353222ce3d0451f34863b480b958bc38b64108e40094001a4f007049fe88728a2636117ebffcca0231e36ab7396"
    "c2b08c0511746e790ef21f77e914ca696a05035216db11540e9de8e808fc1dec4e673d8643995750a4d88a38df16fef96e"
    "2fc32860477a25c7b0dd7ab9ea631ada0e21bed413b9d7f635a480225675374e44c9e3c55071307204ac60481f040d60c2"
    "a4006e0a7c76f234250942e9270124dd16ff32cb5c05451c2bbce2866d76ee85e7a39104c0"
)


def test_format_version_3_artifacts_still_decode() -> None:
    back = decode_compact(_V3_ARTIFACT)
    assert back.shapes == [(4, 3), (1, 4)] and back.quant[0]["input_zero_point"] == 3
    assert back.layers[1][0].tolist() == [[0.4826500713825226, -0.2413250356912613, 0.9577587246894836,
                                           -0.19607658684253693]]  # fmt: skip
    np.testing.assert_allclose(back.logits(np.float32([[1, 2, 3]])), [-0.27874878], rtol=1e-6)
    again = encode_compact(back)
    assert again[3] == 4 and len(again) < len(_V3_ARTIFACT)  # scales now in the stream, not the JSON
    assert decode_compact(again).equals(back)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_low_bit_grids_cost_their_bit_width(make_state, bits: int) -> None:
    """A dense ``bits``-bit layer's codes cost at most ``bits`` bits a weight (the fixed-width fallback),
    its scales 16 bits a row when float16 values; decoding is bit-exact."""
    from fraudlite.compression.qat import compute_weight_scales, snap_to_grid, weight_qmax

    c = make_state(hidden=(64, 32))
    qmax = weight_qmax(bits)
    layers, quant = [], []
    for w, b in c.layers:
        scale = compute_weight_scales(w, True, bits, "mse").astype(np.float16).astype(np.float32)
        layers.append((snap_to_grid(w, scale, qmax), b))
        quant.append({"weight_scale": [float(x) for x in scale], "weight_qmax": qmax, "bits": bits})
    q = CompressedMLP(layers, c.mean, c.std, quant=quant)
    data = encode_compact(q)
    assert decode_compact(data).equals(q)
    parts = compact_breakdown(q)
    assert parts["weights"] * 8 <= bits * q.n_weights() + 3 * 8 * 4  # + each layer's coder header
    assert parts["codebooks"] * 8 <= 16 * 97 + 3 * 8  # 97 rows


def test_binary_and_ternary_codes_cost_one_and_two_bits(make_state) -> None:
    """Sign-times-scale rows (two codes of the qmax = 1 grid) cost ~1 bit a weight; a k = 3 codebook's
    indices at most 2 bits; both decode bit-exactly."""
    c = make_state(hidden=(64, 32))
    binary_layers, quant, ternary_layers, codebooks = [], [], [], []
    for w, b in c.layers:
        alpha = np.abs(w).mean(axis=1).astype(np.float16).astype(np.float32)
        binary_layers.append((np.where(w >= 0, 1, -1).astype(np.float32) * alpha[:, None], b))
        quant.append({"weight_scale": [float(x) for x in alpha], "weight_qmax": 1, "bits": 1})
        t = 0.7 * np.abs(w).mean()
        idx = (1 + (w > t).astype(int) - (w < -t)).astype(np.uint8)
        codebooks.append((np.float32([-0.5, 0.0, 0.25]), idx))
        ternary_layers.append((codebooks[-1][0][idx], b))
    binary = CompressedMLP(binary_layers, c.mean, c.std, quant=quant)
    ternary = CompressedMLP(ternary_layers, c.mean, c.std, codebooks=codebooks)
    for state, bits_per_weight in ((binary, 1), (ternary, 2)):
        assert decode_compact(encode_compact(state)).equals(state)
        assert compact_breakdown(state)["weights"] * 8 <= bits_per_weight * state.n_weights() + 3 * 40
