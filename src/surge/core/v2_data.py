"""Tensor data of the v2 protocol: JSON lists and Triton's binary tensor data extension.

JSON `data` is a flat row-major list or nested lists. Binary data (Triton's
`extension_binary_data.md`) follows the JSON object in the body, each binary
tensor's bytes back to back in the order the tensors appear in the JSON, each
size in its `parameters.binary_data_size`. Elements are little-endian,
row-major, unpadded; BOOL is one byte (0 or 1); a BYTES element is a 4-byte
little-endian unsigned length followed by that many bytes.

Pure functions: no I/O. Errors are `SurgeError` 400s naming the tensor, since
every failure while decoding is a malformed client request.

Both sides of the protocol use it: the v2 adapter (`api.v2_codec`) and the upstream
runtime, which decodes a remote v2 server's answer; hence here, not under api/.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import numpy as np

from surge.core.errors import SurgeError, bad_input
from surge.core.tensors import NUMPY_DTYPES

FLOATS = {"FP16", "FP32", "FP64"}
_LEN = struct.Struct("<I")
# Python types a JSON value may have per datatype family, and how to say so.
# `type(True)` is bool, not int, so booleans never pass as numbers and numbers
# never pass as BOOL.
_ALLOWED_KINDS: dict[str, tuple[set[type], str]] = {
    "BOOL": ({bool}, "true/false"),
    "BYTES": ({str}, "strings"),
    "float": ({int, float}, "numbers"),
    "int": ({int}, "integers"),
}
_KIND_WORDS = {
    str: "strings",
    int: "integers",
    float: "non-integer numbers",
    bool: "booleans",
    list: "lists mixed with values",
    dict: "objects",
    type(None): "nulls",
}
_DATATYPE_OF = {np.dtype(dtype): name for name, dtype in NUMPY_DTYPES.items()}


# -- JSON --------------------------------------------------------------------


def from_json(name: str, datatype: str, data: Any, shape: tuple[int, ...]) -> np.ndarray:
    """JSON `data` -> an array of `shape` with the datatype's numpy dtype (no casting)."""
    if not isinstance(data, list):
        raise bad_input(f"input '{name}': 'data' must be a list (flat row-major or nested)")
    flat = _flatten(name, data, len(shape))
    count = _product(shape)
    if len(flat) != count:
        raise bad_input(
            f"input '{name}': 'data' has {len(flat)} elements but shape {list(shape)} needs {count}"
        )
    # One pass in C over the element types rejects strings for numbers, floats
    # for integers and booleans anywhere but BOOL before numpy could coerce them.
    kinds = set(map(type, flat))
    family = datatype if datatype in ("BOOL", "BYTES") else "float" if datatype in FLOATS else "int"
    allowed, want = _ALLOWED_KINDS[family]
    if not kinds <= allowed:
        got = ", ".join(sorted(_KIND_WORDS.get(k, k.__name__) for k in kinds - allowed))
        raise bad_input(f"input '{name}': {datatype} data must be {want}; got {got}")
    if datatype == "BYTES":
        return object_array([text.encode("utf-8") for text in flat], shape)
    try:
        # Out-of-range integers raise OverflowError; floats that overflow the
        # dtype (1e39 as FP32) would silently become inf without errstate.
        with np.errstate(over="raise"):
            array = np.array(flat, dtype=NUMPY_DTYPES[datatype])
    except (OverflowError, FloatingPointError):
        raise bad_input(f"input '{name}': a value is out of range for {datatype}") from None
    return array.reshape(shape)


def _flatten(name: str, data: list[Any], rank: int) -> list[Any]:
    """Nested lists -> one flat list, a level at a time. Nesting deeper than the shape's
    rank is refused: the depth is the client's to choose, and following it by recursion
    let 1,000 levels of brackets end in a RecursionError (a 500)."""
    level = data
    for _ in range(rank):
        if not level or type(level[0]) is not list:
            return level  # flat; a stray list further on is caught by the kind check
        if not all(type(item) is list for item in level):
            raise bad_input(f"input '{name}': nested 'data' mixes lists and values")
        level = list(itertools.chain.from_iterable(level))
    if level and type(level[0]) is list:
        raise bad_input(
            f"input '{name}': 'data' is nested deeper than its shape's {rank} dimension(s)"
        )
    return level


def to_json(array: np.ndarray, datatype: str) -> np.ndarray | list[str] | None:
    """An output's JSON `data`: a flat numpy array (orjson writes it natively), or
    BYTES as str; None when a BYTES element is not valid UTF-8 (JSON cannot hold it)."""
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).reshape(-1)
    texts: list[str] = []
    for item in array.reshape(-1).tolist():
        if isinstance(item, str):
            texts.append(item)
            continue
        try:
            texts.append(as_bytes(item).decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return texts


def datatype_of(name: str, array: np.ndarray) -> str:
    """The v2 datatype of an output the model did not declare."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    datatype = _DATATYPE_OF.get(array.dtype.newbyteorder("="))
    if datatype is None:
        raise SurgeError("internal", f"output '{name}' has unsupported dtype {array.dtype}", 500)
    return datatype


# -- binary ------------------------------------------------------------------


def from_binary(name: str, datatype: str, raw: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """One input's binary data -> an array of `shape`."""
    if datatype == "BYTES":
        return _bytes_from_binary(name, raw, shape)
    dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
    count = _product(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise bad_input(
            f"input '{name}': binary_data_size is {len(raw)} bytes but shape {list(shape)} of "
            f"{datatype} needs {expected} ({count} x {dtype.itemsize} bytes)"
        )
    # frombuffer views the request body read-only; the copy gives runtimes an
    # ordinary writable array in native byte order and lets the body be freed.
    array = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)
    if datatype == "BOOL" and array.view(np.uint8).max(initial=0) > 1:
        raise bad_input(f"input '{name}': BOOL binary data must hold only bytes 0 and 1")
    return array.reshape(shape)


def _bytes_from_binary(name: str, raw: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    count = _product(shape)
    items: list[bytes] = []
    offset, end = 0, len(raw)
    while offset < end:
        if len(items) == count:
            raise bad_input(
                f"input '{name}': binary data holds more than the {count} BYTES elements "
                f"that shape {list(shape)} declares"
            )
        if offset + 4 > end:
            raise bad_input(
                f"input '{name}': BYTES element {len(items)} has a truncated 4-byte length prefix"
            )
        (length,) = _LEN.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise bad_input(
                f"input '{name}': BYTES element {len(items)} declares {length} bytes but only "
                f"{end - offset} remain in its binary_data_size"
            )
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise bad_input(
            f"input '{name}': binary data holds {len(items)} BYTES elements but shape "
            f"{list(shape)} needs {count}"
        )
    return object_array(items, shape)


def to_binary(array: np.ndarray, datatype: str) -> bytes:
    """One output's binary data: little-endian elements, BYTES length-prefixed."""
    if datatype != "BYTES":
        dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
        return np.ascontiguousarray(array, dtype=dtype).tobytes()
    parts: list[bytes] = []
    for item in array.reshape(-1).tolist():
        data = as_bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


# -- shared ------------------------------------------------------------------


def as_bytes(item: object) -> bytes:
    """One BYTES element as bytes; runtimes may return str (or numbers, like tritonclient)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    return str(item).encode("utf-8")


def object_array(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    # Fill a preallocated array: np.array(items, dtype=object) could try to nest
    # sequences, and it cannot express shapes with zero-size dimensions.
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def _product(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
