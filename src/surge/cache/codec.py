"""A model's outputs (a dict of numpy arrays) as compact bytes, for Redis and for counting
what the in-process cache holds.

No pickle: a cached value may come from another process through Redis, and unpickling
what a shared store hands back would run whatever someone put there. The format is a
small header and the raw buffers:

    b"SCT1" | u16 count | per array:
        u16 name length | name (utf-8) | u8 kind (0 raw, 1 objects)
        raw:     u8 dtype length | dtype (numpy's `dtype.str`, e.g. "<f4")
        both:    u8 ndim | u64 per dimension | u64 payload length | payload
    objects payload, per element: u32 length, its top bit set for `str` | the bytes

Integers are little-endian. Decoded numeric arrays are read-only views of the encoded
bytes (zero copy, and a caller cannot scribble on what the cache holds): copy before
writing into one.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from surge.cache.keys import NUMERIC_KINDS, Uncacheable

MAGIC = b"SCT1"
RAW, OBJECTS = 0, 1
STR_FLAG = 1 << 31  # in an element's length: the element was a str, not bytes
MAX_ELEMENT = STR_FLAG - 1

_U8, _U16, _U32, _U64 = (struct.Struct(f"<{c}") for c in "BHIQ")


class CorruptEntry(ValueError):
    """The bytes are not a value this codec wrote (truncated, foreign, or a bug)."""


def _objects(arr: np.ndarray) -> bytes:
    parts = []
    for x in arr.ravel():
        if isinstance(x, str):
            b, flag = x.encode(), STR_FLAG
        elif isinstance(x, (bytes, bytearray, memoryview)):
            b, flag = bytes(x), 0
        else:
            raise Uncacheable(f"an object output of type {type(x).__name__} cannot be cached")
        if len(b) > MAX_ELEMENT:
            raise Uncacheable("an output element of 2 GiB or more cannot be cached")
        parts.append(_U32.pack(len(b) | flag))
        parts.append(b)
    return b"".join(parts)


def encode(outputs: Mapping[str, np.ndarray]) -> bytes:
    if len(outputs) > 0xFFFF:
        raise Uncacheable("too many outputs to cache")
    parts = [MAGIC, _U16.pack(len(outputs))]
    for name, value in outputs.items():
        arr = np.asarray(value)
        name_bytes = name.encode()
        if len(name_bytes) > 0xFFFF or arr.ndim > 0xFF:
            raise Uncacheable(f"output {name!r} cannot be cached (name or rank too large)")
        parts += [_U16.pack(len(name_bytes)), name_bytes]
        if arr.dtype == object:
            payload: bytes | memoryview = _objects(arr)
            parts.append(_U8.pack(OBJECTS))
        else:
            if arr.dtype.kind not in NUMERIC_KINDS:
                raise Uncacheable(f"output {name!r} of dtype {arr.dtype} cannot be cached")
            arr = arr if arr.flags.c_contiguous else arr.copy(order="C")
            dtype = arr.dtype.str.encode()
            payload = memoryview(arr.reshape(-1).view(np.uint8))
            parts += [_U8.pack(RAW), _U8.pack(len(dtype)), dtype]
        parts.append(_U8.pack(arr.ndim))
        parts += [_U64.pack(d) for d in arr.shape]
        parts += [_U64.pack(len(payload)), payload]
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> int:
        """The offset of the next `n` bytes, which must be there."""
        at = self.at
        if n < 0 or at + n > len(self.data):
            raise CorruptEntry("truncated")
        self.at = at + n
        return at

    def unpack(self, s: struct.Struct) -> int:
        return s.unpack_from(self.data, self.take(s.size))[0]

    def bytes(self, n: int) -> bytes:
        at = self.take(n)
        return self.data[at : at + n]


def _decode_objects(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(math.prod(shape), dtype=object)
    reader = _Reader(data)
    for i in range(out.size):
        length = reader.unpack(_U32)
        b = reader.bytes(length & MAX_ELEMENT)
        out[i] = b.decode() if length & STR_FLAG else b
    if reader.at != len(data):
        raise CorruptEntry("trailing bytes in an object payload")
    return out.reshape(shape)


def decode(data: bytes) -> dict[str, np.ndarray]:
    try:
        return _decode(data)
    except CorruptEntry:
        raise
    except (ValueError, TypeError, UnicodeDecodeError, struct.error) as exc:
        raise CorruptEntry(str(exc)) from None


def _decode(data: bytes) -> dict[str, np.ndarray]:
    data = bytes(data)
    if not data.startswith(MAGIC):
        raise CorruptEntry("not an encoded value")
    reader = _Reader(data)
    reader.take(len(MAGIC))
    outputs: dict[str, np.ndarray] = {}
    for _ in range(reader.unpack(_U16)):
        name = reader.bytes(reader.unpack(_U16)).decode()
        kind = reader.unpack(_U8)
        dtype = None
        if kind == RAW:
            dtype = np.dtype(reader.bytes(reader.unpack(_U8)).decode())
            if dtype.kind not in NUMERIC_KINDS:
                raise CorruptEntry(f"dtype {dtype} is not one this codec writes")
        elif kind != OBJECTS:
            raise CorruptEntry(f"unknown kind {kind}")
        shape = tuple(reader.unpack(_U64) for _ in range(reader.unpack(_U8)))
        length = reader.unpack(_U64)
        at = reader.take(length)
        if dtype is None:
            outputs[name] = _decode_objects(data[at : at + length], shape)
            continue
        count = math.prod(shape)
        if length != count * dtype.itemsize:
            raise CorruptEntry(f"output {name!r}: {length} bytes for shape {shape} of {dtype}")
        outputs[name] = np.frombuffer(data, dtype, count, at).reshape(shape)
    if reader.at != len(data):
        raise CorruptEntry("trailing bytes")
    return outputs


def encode_row(outputs: Mapping[str, np.ndarray], row: int) -> bytes:
    """Row `row` of every output (the batch dimension dropped), for per-row reuse."""
    return encode({name: np.asarray(arr)[row, ...] for name, arr in outputs.items()})


def encode_rows(outputs: Mapping[str, np.ndarray]) -> list[bytes]:
    """`encode_row` of every row, byte for byte. Numeric outputs (the common case, and
    a cost on every miss) take a shortcut: an output's header is the same for every row
    and every request of a model (kept, bounded), so a row only adds its slice of the
    buffer."""
    outputs = {name: np.asarray(arr) for name, arr in outputs.items()}
    rows = {arr.shape[0] if arr.ndim else -1 for arr in outputs.values()}
    if len(rows) != 1 or -1 in rows:
        raise Uncacheable("per-row values need outputs that share their batch dimension")
    n = rows.pop()
    parts = []  # per output: its header, its flat buffer, the bytes of a row
    for name, arr in outputs.items():
        if arr.dtype.kind not in NUMERIC_KINDS or arr.ndim > 0x100 or len(name) > 0x3FFF:
            return [encode_row(outputs, i) for i in range(n)]  # objects, or refusals
        arr = arr if arr.flags.c_contiguous else arr.copy(order="C")
        header, row_bytes = _row_header(name, arr.dtype.str, arr.shape[1:])
        parts.append((header, memoryview(arr.reshape(-1).view(np.uint8)), row_bytes))
    if len(parts) > 0xFFFF:
        raise Uncacheable("too many outputs to cache")
    start = MAGIC + _U16.pack(len(parts))
    if n == 1 and len(parts) == 1:
        ((header, flat, _),) = parts
        return [b"".join((start, header, flat))]
    values = []
    for i in range(n):
        row = [start]
        for header, flat, row_bytes in parts:
            row += (header, flat[i * row_bytes : (i + 1) * row_bytes])
        values.append(b"".join(row))
    return values


@lru_cache(maxsize=1024)  # a model has few outputs, each of one dtype and row shape
def _row_header(name: str, dtype_str: str, row_shape: tuple[int, ...]) -> tuple[bytes, int]:
    """What `encode` writes before a row's payload of one numeric output, and the
    payload's length."""
    name_bytes, dtype = name.encode(), dtype_str.encode()
    row_bytes = np.dtype(dtype_str).itemsize * math.prod(row_shape)
    header = b"".join([
        _U16.pack(len(name_bytes)), name_bytes, _U8.pack(RAW), _U8.pack(len(dtype)), dtype,
        _U8.pack(len(row_shape)), *(_U64.pack(d) for d in row_shape), _U64.pack(row_bytes),
    ])  # fmt: skip
    return header, row_bytes


def decode_row(data: bytes) -> dict[str, np.ndarray]:
    """One row's outputs, each without the batch dimension."""
    return decode(data)


def assemble_rows(
    found: Sequence[bytes | None], fresh: Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """Cached rows (encoded; None where a row was computed) and the fresh ones (batched,
    in the order of the Nones) back into one answer, in the request's order."""
    row_dicts: list[Mapping[str, np.ndarray]] = []
    next_fresh = 0
    for value in found:
        if value is not None:
            row_dicts.append(decode_row(value))
        else:
            assert fresh is not None
            row_dicts.append({n: a[next_fresh] for n, a in fresh.items()})
            next_fresh += 1
    return stack_rows(row_dicts)


def stack_rows(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows (cached and fresh, in request order) back into batched outputs. Rows must
    agree on names and shapes: a model whose rows vary in shape is not reused per row."""
    if not rows:
        raise ValueError("no rows to stack")
    names = list(rows[0])
    if any(set(r) != set(names) for r in rows):
        raise ValueError("rows disagree on their outputs")
    return {name: np.stack([r[name] for r in rows]) for name in names}
