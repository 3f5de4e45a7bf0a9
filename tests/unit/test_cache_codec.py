"""The cache codec: a model's outputs survive the trip to bytes and back exactly, with
a few bytes of header and no pickle; anything else is refused on the way in and
reported as corrupt on the way out, never half-decoded."""

from __future__ import annotations

import numpy as np
import pytest

from surge.cache.codec import (
    CorruptEntry,
    decode,
    decode_row,
    encode,
    encode_row,
    encode_rows,
    stack_rows,
)
from surge.cache.keys import Uncacheable


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        if a[name].dtype == object:
            assert [type(x) for x in a[name].ravel()] == [type(x) for x in b[name].ravel()]
        np.testing.assert_array_equal(a[name], b[name])


NUMERIC = {
    "bool": np.array([True, False, True]),
    "u8": np.arange(5, dtype=np.uint8),
    "i64": np.array([[-(2**62), 0], [1, 2**62]], dtype=np.int64),
    "f16": np.array([0.5, -1.25], dtype=np.float16),
    "f32": np.linspace(-1, 1, 384, dtype=np.float32).reshape(1, 384),
    "f64_big_endian": np.array([1.5, np.inf, -0.0], dtype=">f8"),
    "c64": np.array([1 + 2j], dtype=np.complex64),
    "labels": np.array(["cat", "horse"]),  # fixed-width unicode, as scikit-learn returns
    "raw": np.array([b"ab", b"c"], dtype="S2"),
    "scalar": np.array(3.5, dtype=np.float32),
    "empty": np.zeros((0, 16), dtype=np.float32),
}


def test_numeric_outputs_round_trip_exactly_with_a_small_header():
    data = encode(NUMERIC)
    assert_same(decode(data), NUMERIC)
    payload = sum(a.nbytes for a in NUMERIC.values())
    assert len(data) - payload < 40 * len(NUMERIC)  # a header, not a pickle
    assert b"numpy" not in data and b"\x80\x04" not in data[:2]


def test_a_non_contiguous_output_round_trips_as_its_values():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2].T
    np.testing.assert_array_equal(decode(encode({"a": a}))["a"], a)


def test_object_outputs_keep_text_as_str_and_bytes_as_bytes():
    outputs = {
        "mixed": np.array(["héllo", b"\x00\xff", "", b""], dtype=object),
        "grid": np.array([["a", "bb"], ["ccc", "dddd"]], dtype=object),
        "one": np.array("alone", dtype=object),
    }
    assert_same(decode(encode(outputs)), outputs)


def test_decoded_arrays_are_read_only_so_a_caller_cannot_change_what_the_cache_holds():
    decoded = decode(encode({"x": np.ones(4, np.float32)}))["x"]
    with pytest.raises(ValueError, match="read-only"):
        decoded[0] = 2.0
    writable = decoded.copy()
    writable[0] = 2.0


@pytest.mark.parametrize(
    "outputs",
    [
        {"o": np.array([1, 2], dtype=object)},
        {"o": np.array([None], dtype=object)},
        {"t": np.array(["2024-01-01"], dtype="datetime64[D]")},
        {"v": np.zeros(2, dtype=[("a", "<i4")])},
    ],
)
def test_outputs_without_a_byte_form_are_refused(outputs):
    with pytest.raises(Uncacheable):
        encode(outputs)


def test_every_truncation_and_any_trailing_byte_is_reported_as_corrupt():
    data = encode({"x": np.arange(3, dtype=np.int32), "t": np.array(["ab", b"c"], dtype=object)})
    for cut in range(len(data)):
        with pytest.raises(CorruptEntry):
            decode(data[:cut])
    with pytest.raises(CorruptEntry):
        decode(data + b"\x00")
    with pytest.raises(CorruptEntry):
        decode(b"PK\x03\x04" + data[4:])  # not ours


def test_a_lying_header_is_reported_as_corrupt():
    data = bytearray(encode({"x": np.arange(4, dtype=np.int32)}))
    at = data.index(b"<i4")
    data[at : at + 3] = b"|O8"  # an object dtype smuggled in as raw
    with pytest.raises(CorruptEntry):
        decode(bytes(data))
    data[at : at + 3] = b"<i8"  # twice the bytes the payload has
    with pytest.raises(CorruptEntry):
        decode(bytes(data))


def test_rows_round_trip_and_cached_rows_assemble_with_fresh_ones_into_the_full_answer():
    rng = np.random.default_rng(0)
    outputs = {
        "embedding": rng.standard_normal((32, 384)).astype(np.float32),
        "label": np.array([f"l{i}" for i in range(32)], dtype=object),
        "score": rng.standard_normal(32),
    }
    encoded = encode_rows(outputs)
    assert len(encoded) == 32
    one = decode_row(encoded[5])
    assert one["embedding"].shape == (384,) and one["label"].shape == ()
    assert one["label"][()] == "l5"
    assert decode_row(encode_row(outputs, 5))["score"] == outputs["score"][5]
    # 30 rows from the cache, rows 3 and 17 computed now (a batch of 2 through the model).
    fresh = {name: arr[[3, 17]] for name, arr in outputs.items()}
    fresh_rows = iter({name: arr[i, ...] for name, arr in fresh.items()} for i in range(2))
    rows = [next(fresh_rows) if i in (3, 17) else decode_row(encoded[i]) for i in range(32)]
    assert_same(stack_rows(rows), outputs)


def test_rows_that_disagree_cannot_be_stacked():
    with pytest.raises(ValueError):
        stack_rows([])
    with pytest.raises(ValueError):
        stack_rows([{"a": np.ones(2)}, {"b": np.ones(2)}])
    with pytest.raises(ValueError):
        stack_rows([{"a": np.ones(2)}, {"a": np.ones(3)}])  # variable-length rows
    with pytest.raises(Uncacheable):
        encode_rows({"a": np.ones(2), "b": np.ones(3)})


@pytest.mark.parametrize(
    "outputs",
    [
        {"embedding": np.arange(12, dtype=np.float32).reshape(3, 4)},
        {"probs": np.arange(6, dtype=">f8").reshape(3, 2), "label": np.array([1, 2, 3])},
        {"scalar_per_row": np.array([True, False, True])},
        {"strided": np.arange(24, dtype=np.int16).reshape(3, 8)[:, ::2]},
        {"cube": np.zeros((3, 2, 2, 2), dtype=np.complex64), "fixed": np.array(["a", "bc", "d"])},
        {"text": np.array(["x", b"y", "z"], dtype=object), "n": np.ones(3, dtype=np.uint8)},
    ],
)
def test_every_row_encodes_as_encode_row_does(outputs: dict[str, np.ndarray]) -> None:
    """The shortcut for numeric outputs writes the very bytes the general path writes: a
    row stored by one process is read by another, whichever path stored it."""
    values = encode_rows(outputs)
    assert values == [encode_row(outputs, i) for i in range(3)]
    for i, value in enumerate(values):
        row = decode_row(value)
        for name, arr in outputs.items():
            assert np.array_equal(row[name], np.asarray(arr)[i]) and row[name].dtype == arr.dtype
