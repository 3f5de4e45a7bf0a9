"""Open Inference Protocol v2 (KServe / Triton REST) infer request and response codec.

Pure: bytes in, numpy out, and back. The HTTP adapter owns headers, status
codes and decompression; this module owns the JSON shape, Triton's binary
tensor data extension (see `v2_data`) and every check that turns a bad
request into a 400 naming the tensor and what to fix, so that no malformed
tensor reaches the batcher.

Wire notes the adapter relies on:
- `header_length` is the `Inference-Header-Content-Length` header: the JSON
  object's byte length; binary tensor data follows it in input order.
- `tritonclient[http]` sends inputs as binary by default, asks for every output
  as binary (`binary_data: true` per output, or `binary_data_output: true` at
  request level when it names no outputs) and sets no Content-Type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from surge.core import v2_data
from surge.core.errors import SurgeError, bad_input
from surge.core.tensors import TensorSpec

# v2 parameter values are scalars (the protocol's `$parameter_value`); a few levels of
# objects leave room for extensions, far more is an attack on whatever walks them.
MAX_PARAMETER_DEPTH = 8


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool  # resolved: the output's `binary_data`, else the request-level default


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    tensors: dict[str, np.ndarray]
    outputs: list[RequestedOutput]  # empty: return every output
    binary_output_default: bool  # request-level `parameters.binary_data_output`
    rows: int  # the batch dimension shared by every input
    parameters: dict[str, Any] = field(default_factory=dict)  # request-level, as sent


def decode_infer_request(
    body: bytes,
    header_length: int | None,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_rows: int,
) -> InferRequest:
    """Parse and validate one infer request against the model's tensor specs.

    `header_length` is the `Inference-Header-Content-Length` value (None: the
    body is only JSON); `max_rows` bounds the batch dimension.
    """
    header, tail = _split_body(body, header_length)
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        if header_length is None:
            # The usual cause of binary bytes after the JSON: a lost header.
            raise bad_input(
                f"request body is not valid JSON ({exc}); a body carrying binary tensor data "
                "needs an Inference-Header-Content-Length header"
            ) from None
        raise bad_input(f"the JSON header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_input("request body must be a JSON object with an 'inputs' list")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_input("'id' must be a string")
    parameters = _object(doc.get("parameters"), "request 'parameters'")
    _check_depth(parameters, "request 'parameters'")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise bad_input("parameters.binary_data_output must be true or false")

    entries = doc.get("inputs")
    if not isinstance(entries, list) or not entries:
        expected = ", ".join(f"'{s.name}'" for s in inputs)
        raise bad_input(
            f"'inputs' must be a non-empty list of tensors (this model takes {expected})"
        )

    specs = {spec.name: spec for spec in inputs}
    tensors: dict[str, np.ndarray] = {}
    rows: int | None = None
    offset = 0  # into the binary data after the JSON header
    for entry in entries:
        name, spec, shape, size = _check_input(entry, specs, tensors)
        if rows is None:
            rows = _check_rows(name, shape, max_rows)
        elif shape[0] != rows:
            raise bad_input(
                f"input '{name}' has batch dimension {shape[0]} but an earlier input has "
                f"{rows}; every input must have the same first dimension"
            )
        if size is None:
            _check_room(name, shape, len(header))
            array = v2_data.from_json(name, spec.datatype, entry.get("data"), shape)
        else:
            if header_length is None:
                raise bad_input(
                    f"input '{name}' has binary_data_size but the request has no "
                    "Inference-Header-Content-Length header"
                )
            if offset + size > len(tail):
                raise bad_input(
                    f"input '{name}': binary_data_size values add up to more than the "
                    f"{len(tail)} bytes after the JSON header"
                )
            raw = tail[offset : offset + size]
            offset += size
            array = v2_data.from_binary(name, spec.datatype, raw, shape)
        if spec.datatype in v2_data.FLOATS and not np.isfinite(array).all():
            raise bad_input(f"input '{name}' holds NaN or infinite values; send finite numbers")
        tensors[name] = array

    missing = [spec.name for spec in inputs if spec.name not in tensors]
    if missing:
        raise bad_input("missing required input(s): " + ", ".join(f"'{n}'" for n in missing))
    if offset != len(tail):
        raise bad_input(
            f"{len(tail)} bytes follow the JSON header but the inputs' binary_data_size "
            f"values add up to {offset}"
        )
    requested = _requested_outputs(doc.get("outputs"), outputs, binary_default)
    assert rows is not None  # inputs is non-empty
    return InferRequest(request_id, tensors, requested, binary_default, rows, parameters)


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    specs: list[TensorSpec],
    requested: list[RequestedOutput],
    binary_output_default: bool,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode one response: (body, JSON header length, or None for a pure JSON body).

    With a header length the adapter must send `Inference-Header-Content-Length`
    and `Content-Type: application/octet-stream`; without, `application/json`.
    """
    by_name = {spec.name: spec for spec in specs}
    if requested:
        selection = [(r.name, r.binary) for r in requested]
    else:
        names = [s.name for s in specs if s.name in outputs]
        names += [name for name in outputs if name not in by_name]
        selection = [(name, binary_output_default) for name in names]

    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in selection:
        array = outputs.get(name)
        if array is None:
            raise SurgeError("internal", f"the model produced no output '{name}'", 500)
        spec = by_name.get(name)
        datatype = spec.datatype if spec is not None else v2_data.datatype_of(name, array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        try:
            data = None if binary else v2_data.to_json(array, datatype)
            # None for JSON means BYTES that are not UTF-8: Triton writes them raw
            # (invalid JSON that tritonclient refuses); sending that one output as
            # binary instead keeps the body valid and the data lossless.
            blob = v2_data.to_binary(array, datatype) if data is None else None
        except (TypeError, ValueError) as exc:
            raise SurgeError(
                "internal", f"output '{name}' cannot be encoded as {datatype}: {exc}", 500
            ) from None
        if blob is None:
            entry["data"] = data
        else:
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        entries.append(entry)

    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters  # response-level, e.g. a cascade's needs_review flags
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def model_metadata(
    name: str,
    versions: list[str],
    platform: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
) -> dict[str, Any]:
    """The v2 model metadata object (`GET /v2/models/{name}[/versions/{v}]`)."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [spec.describe() for spec in inputs],
        "outputs": [spec.describe() for spec in outputs],
    }


# -- request helpers ---------------------------------------------------------


def _split_body(body: bytes, header_length: int | None) -> tuple[memoryview, memoryview]:
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    if header_length < 0 or header_length > len(body):
        raise bad_input(
            f"Inference-Header-Content-Length is {header_length} but the body has "
            f"{len(body)} bytes; it must give the JSON header's length in bytes"
        )
    return view[:header_length], view[header_length:]


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_input(f"{what} must be a JSON object")
    return value


def _check_input(
    entry: Any, specs: dict[str, TensorSpec], seen: dict[str, np.ndarray]
) -> tuple[str, TensorSpec, tuple[int, ...], int | None]:
    """Validate one input's metadata: (name, spec, shape, binary size or None for JSON)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise bad_input("each entry of 'inputs' must be an object with a string 'name'")
    name = entry["name"]
    spec = specs.get(name)
    if spec is None:
        expected = ", ".join(f"'{n}'" for n in specs)
        raise bad_input(f"unknown input '{name}'; this model takes {expected}")
    if name in seen:
        raise bad_input(f"input '{name}' is given more than once")

    datatype = entry.get("datatype")
    if datatype != spec.datatype:
        got = "none" if datatype is None else repr(datatype)
        raise bad_input(f"input '{name}': datatype must be '{spec.datatype}', got {got}")

    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise bad_input(f"input '{name}': 'shape' must be a list of non-negative integers")
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise bad_input(
            f"input '{name}': shape {shape} does not match the model's {list(spec.shape)} "
            "(-1 is any size; the first dimension is the batch)"
        )

    params = _object(entry.get("parameters"), f"input '{name}' 'parameters'")
    if "shared_memory_region" in params:
        raise bad_input(f"input '{name}': shared memory is not supported; send the data inline")
    size = params.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise bad_input(f"input '{name}': binary_data_size must be a non-negative integer")
        if "data" in entry:
            raise bad_input(f"input '{name}' has both 'data' and binary_data_size; give one")
    elif "data" not in entry:
        raise bad_input(f"input '{name}' has no 'data' (or parameters.binary_data_size)")
    return name, spec, tuple(shape), size


def _check_room(name: str, shape: tuple[int, ...], header_bytes: int) -> None:
    """Refuse a shape that declares more JSON elements than the body holds before any
    per-element work: each element takes at least 2 bytes (a digit and a comma; the last
    one has no comma), so this never refuses a request whose data matches its shape."""
    count = math.prod(shape)
    room = (header_bytes + 1) // 2
    if count > room:
        raise bad_input(
            f"input '{name}': shape {list(shape)} declares {count} elements but the "
            f"{header_bytes}-byte JSON body can hold at most {room}"
        )


def _check_depth(value: Any, what: str) -> None:
    """Refuse objects and lists nested deeper than MAX_PARAMETER_DEPTH. The request's
    parameters go on to routes and receipts, where str() and JSON encoding recurse:
    a value 1,000 levels deep that orjson parsed fine would end there as a 500.
    Iterative, so the check itself cannot hit the recursion limit."""
    frontier = [value]
    for _ in range(MAX_PARAMETER_DEPTH + 1):
        children: list[Any] = []
        for item in frontier:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        if not children:
            return
        frontier = children
    raise bad_input(f"{what} are nested more than {MAX_PARAMETER_DEPTH} levels deep")


def _check_rows(name: str, shape: tuple[int, ...], max_rows: int) -> int:
    rows = shape[0]
    if rows == 0:
        raise bad_input(f"input '{name}' has an empty batch (first dimension 0); send 1 or more")
    if rows > max_rows:
        raise bad_input(
            f"input '{name}' has a batch of {rows} rows; the limit is {max_rows} per request"
        )
    return rows


def _requested_outputs(
    raw: Any, specs: list[TensorSpec], binary_default: bool
) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_input("'outputs' must be a list of objects with a 'name'")
    known = {spec.name for spec in specs}
    requested: list[RequestedOutput] = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise bad_input("each entry of 'outputs' must be an object with a string 'name'")
        name = entry["name"]
        if name not in known:
            names = ", ".join(f"'{spec.name}'" for spec in specs)
            raise bad_input(f"unknown output '{name}'; this model returns {names}")
        if any(r.name == name for r in requested):
            raise bad_input(f"output '{name}' is requested more than once")
        params = _object(entry.get("parameters"), f"output '{name}' 'parameters'")
        if params.get("classification"):
            raise bad_input(f"output '{name}': the classification extension is not supported")
        if "shared_memory_region" in params:
            raise bad_input(f"output '{name}': shared memory is not supported")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise bad_input(f"output '{name}': binary_data must be true or false")
        requested.append(RequestedOutput(name, binary))
    return requested
