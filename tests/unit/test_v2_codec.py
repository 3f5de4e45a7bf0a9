"""The v2 codec against the stock `tritonclient[http]` request builder and response parser.

tritonclient's `generate_request_body` / `parse_response_body` are the exact
code paths `InferenceServerClient.infer` runs, without a socket, so these
round trips pin the wire format (JSON and binary tensor data) that real
Triton clients speak.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from surge.api.v2_codec import (
    InferRequest,
    RequestedOutput,
    decode_infer_request,
    encode_infer_response,
    model_metadata,
)
from surge.core.errors import SurgeError
from surge.core.tensors import NUMPY_DTYPES, TensorSpec

Client = triton.InferenceServerClient

INPUTS = [
    TensorSpec("x", "FP32", (-1, 4)),
    TensorSpec("ids", "INT64", (-1, 3)),
    TensorSpec("text", "BYTES", (-1,)),
]
OUTPUTS = [
    TensorSpec("y", "FP32", (-1, 4)),
    TensorSpec("n", "INT64", (-1,)),
    TensorSpec("label", "BYTES", (-1,)),
]
MAX_ROWS = 32

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
IDS = np.array([[1, -2, 3], [2**40, 0, -(2**62)]], dtype=np.int64)
TEXT = np.array([b"hello", "h\u00e9llo \u2603".encode()], dtype=object)
RESULTS = {
    "y": X * 2,
    "n": np.array([7, -9], dtype=np.int64),
    "label": np.array([b"cat", "d\u00f6g".encode()], dtype=object),
}


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _triton_inputs(binary: bool) -> list[triton.InferInput]:
    return [
        _input("x", X, "FP32", binary),
        _input("ids", IDS, "INT64", binary),
        _input("text", TEXT, "BYTES", binary),
    ]


def _decode(body: bytes, header_length: int | None, max_rows: int = MAX_ROWS) -> InferRequest:
    return decode_infer_request(body, header_length, INPUTS, OUTPUTS, max_rows)


def _encode(request: InferRequest, outputs: dict[str, np.ndarray] | None = None):
    return encode_infer_response(
        model_name="demo",
        model_version="3",
        request_id=request.id,
        outputs=RESULTS if outputs is None else outputs,
        specs=OUTPUTS,
        requested=request.outputs,
        binary_output_default=request.binary_output_default,
    )


# -- round trips with tritonclient ---------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_request_round_trip(binary: bool) -> None:
    body, header_length = Client.generate_request_body(_triton_inputs(binary), request_id="r-1")
    assert (header_length is not None) == binary

    request = _decode(body, header_length)

    assert request.id == "r-1"
    assert request.rows == 2
    assert request.outputs == []
    # tritonclient asks for every output as binary when it names none.
    assert request.binary_output_default is True
    assert list(request.tensors) == ["x", "ids", "text"]
    x, ids, text = request.tensors["x"], request.tensors["ids"], request.tensors["text"]
    assert x.dtype == np.float32 and x.shape == (2, 4)
    np.testing.assert_array_equal(x, X)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, IDS)
    assert text.dtype == object and text.shape == (2,)
    assert text.tolist() == TEXT.tolist()
    assert all(type(item) is bytes for item in text.tolist())
    assert x.flags.writeable  # runtimes may work in place


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_response_round_trip_all_outputs(binary: bool) -> None:
    inputs = _triton_inputs(binary=True)
    body, header_length = Client.generate_request_body(inputs, request_id="abc")
    request = _decode(body, header_length)
    request = InferRequest(request.id, request.tensors, [], binary, request.rows)

    payload, json_length = _encode(request)

    assert (json_length is not None) == binary
    result = Client.parse_response_body(payload, header_length=json_length)
    response = result.get_response()
    assert response["model_name"] == "demo"
    assert response["model_version"] == "3"
    assert response["id"] == "abc"
    assert [o["name"] for o in response["outputs"]] == ["y", "n", "label"]
    np.testing.assert_array_equal(result.as_numpy("y"), RESULTS["y"])
    assert result.as_numpy("y").dtype == np.float32
    np.testing.assert_array_equal(result.as_numpy("n"), RESULTS["n"])
    label = result.as_numpy("label")
    if binary:
        assert label.tolist() == RESULTS["label"].tolist()
    else:  # JSON carries BYTES as UTF-8 strings
        assert label.tolist() == ["cat", "d\u00f6g"]


def test_requested_subset_mixes_binary_and_json_in_request_order() -> None:
    outputs = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("y", binary_data=True),
    ]
    body, header_length = Client.generate_request_body(_triton_inputs(True), outputs=outputs)
    request = _decode(body, header_length)
    assert request.outputs == [RequestedOutput("label", False), RequestedOutput("y", True)]
    assert request.binary_output_default is False

    payload, json_length = _encode(request)

    assert json_length is not None
    header = orjson.loads(payload[:json_length])
    assert [o["name"] for o in header["outputs"]] == ["label", "y"]
    label, y = header["outputs"]
    assert label["data"] == ["cat", "d\u00f6g"] and "parameters" not in label
    assert y["parameters"] == {"binary_data_size": X.nbytes} and "data" not in y
    assert len(payload) == json_length + X.nbytes
    result = Client.parse_response_body(payload, header_length=json_length)
    np.testing.assert_array_equal(result.as_numpy("y"), RESULTS["y"])
    assert result.as_numpy("n") is None


def test_all_json_response_is_plain_json() -> None:
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("n", "y")]
    body, header_length = Client.generate_request_body(_triton_inputs(False), outputs=outputs)
    request = _decode(body, header_length)

    payload, json_length = _encode(request)

    assert json_length is None
    doc = orjson.loads(payload)
    assert "id" not in doc
    n, y = doc["outputs"]
    assert n == {"name": "n", "datatype": "INT64", "shape": [2], "data": [7, -9]}
    assert y["shape"] == [2, 4] and len(y["data"]) == 8  # flattened row-major
    result = Client.parse_response_body(payload)
    np.testing.assert_allclose(result.as_numpy("y"), RESULTS["y"])


def test_request_level_binary_default_applies_to_outputs_without_binary_data() -> None:
    doc = _json_doc()
    doc["parameters"] = {"binary_data_output": True}
    doc["outputs"] = [{"name": "n"}, {"name": "y", "parameters": {"binary_data": False}}]
    request = _decode(orjson.dumps(doc), None)
    assert request.outputs == [RequestedOutput("n", True), RequestedOutput("y", False)]
    assert request.parameters == {"binary_data_output": True}


def test_non_utf8_bytes_output_falls_back_to_binary() -> None:
    request = _decode(*Client.generate_request_body(_triton_inputs(True)))
    request = InferRequest(None, request.tensors, [RequestedOutput("label", False)], False, 2)
    raw = np.array([b"\xff\xfe", b"ok"], dtype=object)

    payload, json_length = _encode(request, {**RESULTS, "label": raw})

    assert json_length is not None
    result = Client.parse_response_body(payload, header_length=json_length)
    assert result.as_numpy("label").tolist() == [b"\xff\xfe", b"ok"]


def test_response_casts_to_declared_dtype_and_accepts_str_bytes() -> None:
    request = InferRequest(None, {}, [], True, 2)
    outputs = {"y": X.astype(np.float64), "n": np.array([1, 2]), "label": np.array(["a", "bb"])}

    payload, json_length = _encode(request, outputs)

    result = Client.parse_response_body(payload, header_length=json_length)
    assert result.as_numpy("y").dtype == np.float32
    assert result.as_numpy("label").tolist() == [b"a", b"bb"]


def test_undeclared_output_gets_datatype_from_numpy() -> None:
    request = InferRequest(None, {}, [], False, 1)
    payload, _ = _encode(request, {"y": X[:1], "extra": np.array([True, False])})
    outputs = orjson.loads(payload)["outputs"]
    assert outputs[-1] == {"name": "extra", "datatype": "BOOL", "shape": [2], "data": [True, False]}


def test_missing_model_output_is_a_server_error() -> None:
    request = InferRequest(None, {}, [RequestedOutput("n", True)], True, 1)
    with pytest.raises(SurgeError) as caught:
        _encode(request, {"y": X})
    assert caught.value.status == 500 and "'n'" in caught.value.message


@pytest.mark.parametrize("datatype", [d for d in NUMPY_DTYPES if d != "BYTES"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_numeric_datatype_round_trips(datatype: str, binary: bool) -> None:
    dtype = NUMPY_DTYPES[datatype]
    array = (np.arange(6) % 2 == 1) if datatype == "BOOL" else np.arange(6)
    array = array.astype(dtype).reshape(3, 2)
    spec = TensorSpec("t", datatype, (-1, 2))
    body, header_length = Client.generate_request_body([_input("t", array, datatype, binary)])

    request = decode_infer_request(body, header_length, [spec], [spec], MAX_ROWS)

    assert request.tensors["t"].dtype == dtype
    np.testing.assert_array_equal(request.tensors["t"], array)
    payload, json_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs={"t": array},
        specs=[spec],
        requested=[RequestedOutput("t", binary)],
        binary_output_default=False,
    )
    result = Client.parse_response_body(payload, header_length=json_length)
    np.testing.assert_array_equal(result.as_numpy("t"), array)
    assert result.as_numpy("t").dtype == dtype


def test_nested_json_data_and_fixed_dims() -> None:
    doc = _json_doc()
    doc["inputs"][0]["data"] = X.tolist()  # nested rows instead of flat
    doc["inputs"][1]["data"] = [[1, 2, 3], [4, 5, 6]]
    request = _decode(orjson.dumps(doc), None)
    np.testing.assert_array_equal(request.tensors["x"], X)
    assert request.tensors["ids"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_two_dimensional_bytes_input() -> None:
    spec = TensorSpec("s", "BYTES", (-1, 2))
    array = np.array([[b"a", b""], [b"\x00\xff", b"dd"]], dtype=object)
    body, header_length = Client.generate_request_body([_input("s", array, "BYTES", True)])
    request = decode_infer_request(body, header_length, [spec], [spec], MAX_ROWS)
    assert request.tensors["s"].shape == (2, 2)
    assert request.tensors["s"].tolist() == array.tolist()


def test_model_metadata() -> None:
    meta = model_metadata("demo", ["3"], "onnx", INPUTS, OUTPUTS[:1])
    assert meta == {
        "name": "demo",
        "versions": ["3"],
        "platform": "onnx",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "ids", "datatype": "INT64", "shape": [-1, 3]},
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }


# -- bad input -----------------------------------------------------------------


def _json_doc(rows: int = 2) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": [0.5] * (4 * rows)},
            {"name": "ids", "datatype": "INT64", "shape": [rows, 3], "data": [1] * (3 * rows)},
            {"name": "text", "datatype": "BYTES", "shape": [rows], "data": ["a"] * rows},
        ]
    }


_DROP = object()


def _with(path: str, value: Any) -> bytes:
    """A valid JSON request with one field replaced (or dropped): 'x.shape', 'outputs', ..."""
    doc = _json_doc()
    head, _, key = path.rpartition(".")
    target = next(t for t in doc["inputs"] if t["name"] == head) if head else doc
    if value is _DROP:
        del target[key]
    else:
        target[key] = value
    return orjson.dumps(doc)


def _binary(entries: list[tuple[str, str, list[int], bytes]], extra: bytes = b"") -> tuple:
    """A binary request from (name, datatype, shape, raw bytes); extra trails the data."""
    inputs = [
        {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
        for n, d, s, raw in entries
    ]
    header = orjson.dumps({"inputs": inputs})
    return header + b"".join(raw for *_, raw in entries) + extra, len(header)


def _good_binary(text: bytes | None = None, x: np.ndarray | None = None, **kw: Any) -> tuple:
    x = X if x is None else x
    if text is None:
        text = struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bc"
    return _binary(
        [
            ("x", "FP32", [2, 4], x.astype(np.float32).tobytes()),
            ("ids", "INT64", [2, 3], IDS.tobytes()),
            ("text", "BYTES", [2], text),
        ],
        **kw,
    )


def _pair(body: bytes, header_length: int | None = None) -> tuple[bytes, int | None]:
    return body, header_length


def _drop_input(name: str) -> bytes:
    doc = _json_doc()
    doc["inputs"] = [t for t in doc["inputs"] if t["name"] != name]
    return orjson.dumps(doc)


def _duplicate_x() -> bytes:
    doc = _json_doc()
    doc["inputs"].append(doc["inputs"][0])
    return orjson.dumps(doc)


def _ids_rows(rows: int) -> bytes:
    doc = _json_doc()
    doc["inputs"][1] = _json_doc(rows)["inputs"][1]
    return orjson.dumps(doc)


def _zero_rows() -> bytes:
    doc = _json_doc(rows=0)
    return orjson.dumps(doc)


def _nan_binary(value: float) -> tuple:
    x = X.copy()
    x[1, 2] = value
    return _good_binary(x=x)


def _lost_header() -> tuple:
    body, _ = _good_binary()
    return body, None


def _json_only_with_sizes() -> tuple:
    body, header_length = _good_binary()
    return body[:header_length], None


def _with_length(body: bytes) -> tuple[bytes, int]:
    return body, len(body)


BAD_REQUESTS: dict[str, tuple[tuple[bytes, int | None], str]] = {
    "malformed json": (_pair(b'{"inputs": ['), "not valid JSON"),
    "infinite json number": (
        _pair(_with("x.data", [0.5] * 8).replace(b"0.5", b"1e999", 1)),
        "JSON",
    ),
    "header length past body": (_pair(b"{}", 3), "Inference-Header-Content-Length is 3"),
    "negative header length": (_pair(b"{}", -1), "Inference-Header-Content-Length is -1"),
    "header length cuts json": (_pair(_with("id", "r"), 5), "the JSON header is not valid JSON"),
    "body not object": (_pair(b"[1, 2]"), "must be a JSON object"),
    "inputs missing": (_pair(b"{}"), "'inputs' must be a non-empty list"),
    "inputs not list": (_pair(_with("inputs", {"x": 1})), "'inputs' must be a non-empty list"),
    "inputs empty": (_pair(_with("inputs", [])), "takes 'x', 'ids', 'text'"),
    "input not object": (_pair(_with("inputs", [1])), "string 'name'"),
    "unknown input": (
        _pair(_with("x.name", "z")),
        "unknown input 'z'; this model takes 'x', 'ids', 'text'",
    ),
    "missing input": (_pair(_drop_input("ids")), "missing required input(s): 'ids'"),
    "duplicate input": (_pair(_duplicate_x()), "input 'x' is given more than once"),
    "wrong datatype": (
        _pair(_with("x.datatype", "FP64")),
        "'x': datatype must be 'FP32', got 'FP64'",
    ),
    "missing datatype": (_pair(_with("ids.datatype", None)), "'ids': datatype must be 'INT64'"),
    "wrong dim": (_pair(_with("x.shape", [2, 5])), "'x': shape [2, 5] does not match"),
    "wrong rank": (
        _pair(_with("x.shape", [8])),
        "'x': shape [8] does not match the model's [-1, 4]",
    ),
    "shape not list": (_pair(_with("x.shape", "2x4")), "'x': 'shape' must be a list"),
    "negative dim": (_pair(_with("x.shape", [-1, 4])), "non-negative integers"),
    "element count": (_pair(_with("x.data", [0.5] * 7)), "'x': 'data' has 7 elements but shape"),
    "no data": (_pair(_with("x.data", _DROP)), "'x' has no 'data'"),
    "data not list": (_pair(_with("x.data", 3)), "'x': 'data' must be a list"),
    "strings for numbers": (
        _pair(_with("x.data", ["1"] * 8)),
        "FP32 data must be numbers; got strings",
    ),
    "booleans for FP32": (
        _pair(_with("x.data", [True] * 8)),
        "'x': FP32 data must be numbers; got booleans",
    ),
    "booleans for INT64": (_pair(_with("ids.data", [1, 2, 3, 4, 5, False])), "got booleans"),
    "floats for INT64": (_pair(_with("ids.data", [1.5] * 6)), "INT64 data must be integers"),
    "numbers for BYTES": (_pair(_with("text.data", [1, 2])), "'text': BYTES data must be strings"),
    "nulls": (_pair(_with("x.data", [None] * 8)), "got nulls"),
    "mixed nesting": (_pair(_with("ids.data", [[1, 2, 3], 4, 5, 6])), "mixes lists and values"),
    "ragged stray list": (
        _pair(_with("ids.data", [1, 2, 3, 4, 5, [6]])),
        "lists mixed with values",
    ),
    "FP32 overflow": (_pair(_with("x.data", [1e39] * 8)), "'x': a value is out of range for FP32"),
    "INT64 overflow": (_pair(_with("ids.data", [2**63] * 6)), "out of range for INT64"),
    "NaN in binary": (_nan_binary(float("nan")), "'x' holds NaN or infinite values"),
    "Inf in binary": (_nan_binary(float("-inf")), "'x' holds NaN or infinite values"),
    "empty batch": (_pair(_zero_rows()), "empty batch"),
    "batch over limit": (_pair(orjson.dumps(_json_doc(rows=33))), "the limit is 32 per request"),
    "differing batch dims": (_pair(_ids_rows(1)), "'ids' has batch dimension 1 but"),
    "binary sizes short of body": (
        _good_binary(extra=b"\x00"),
        "bytes follow the JSON header but the inputs' binary_data_size values add up to",
    ),
    "binary sizes past body": (
        (_good_binary()[0][:-1], _good_binary()[1]),
        "add up to more than",
    ),
    "binary numeric size vs shape": (
        _binary([("x", "FP32", [2, 4], b"\x00" * 28)]),
        "'x': binary_data_size is 28 bytes but shape [2, 4] of FP32 needs 32",
    ),
    "bytes prefix past buffer": (
        _good_binary(text=struct.pack("<I", 1) + b"a" + struct.pack("<I", 99) + b"bc"),
        "BYTES element 1 declares 99 bytes but only 2 remain",
    ),
    "bytes truncated prefix": (
        _good_binary(text=struct.pack("<I", 1) + b"a" + b"\x02\x00"),
        "truncated 4-byte length prefix",
    ),
    "bytes too few elements": (
        _good_binary(text=struct.pack("<I", 1) + b"a"),
        "'text': binary data holds 1 BYTES elements but shape [2] needs 2",
    ),
    "bytes too many elements": (
        _good_binary(text=(struct.pack("<I", 1) + b"a") * 3),
        "more than the 2 BYTES elements",
    ),
    "binary without header length": (_lost_header(), "needs an Inference-Header-Content-Length"),
    "binary sizes, no binary data": (_json_only_with_sizes(), "no Inference-Header-Content-Length"),
    "data and binary size": (
        _pair(_with("x.parameters", {"binary_data_size": 0})),
        "both 'data' and binary_data_size",
    ),
    "negative binary size": (
        _with_length(_with("x.parameters", {"binary_data_size": -4})),
        "binary_data_size must be a non-negative integer",
    ),
    "shared memory input": (
        _pair(_with("x.parameters", {"shared_memory_region": "r"})),
        "shared memory is not supported",
    ),
    "input parameters not object": (_pair(_with("x.parameters", [])), "must be a JSON object"),
    "unknown output": (
        _pair(_with("outputs", [{"name": "z"}])),
        "unknown output 'z'; this model returns 'y', 'n', 'label'",
    ),
    "duplicate output": (
        _pair(_with("outputs", [{"name": "y"}, {"name": "y"}])),
        "output 'y' is requested more than once",
    ),
    "outputs not list": (_pair(_with("outputs", {"name": "y"})), "'outputs' must be a list"),
    "output binary_data not bool": (
        _pair(_with("outputs", [{"name": "y", "parameters": {"binary_data": 1}}])),
        "binary_data must be true or false",
    ),
    "classification": (
        _pair(_with("outputs", [{"name": "y", "parameters": {"classification": 3}}])),
        "classification extension is not supported",
    ),
    "binary_data_output not bool": (
        _pair(_with("parameters", {"binary_data_output": "yes"})),
        "binary_data_output must be true or false",
    ),
    "request parameters not object": (_pair(_with("parameters", 1)), "must be a JSON object"),
    "id not string": (_pair(_with("id", 7)), "'id' must be a string"),
    "invalid utf-8 in json": (
        _pair(_with("text.data", ["ab", "cd"]).replace(b"ab", b"\xff\xfe")),
        "JSON",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_a_400_naming_the_problem(case: str) -> None:
    (body, header_length), expected = BAD_REQUESTS[case]
    with pytest.raises(SurgeError) as caught:
        _decode(body, header_length)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_input"
    assert expected in caught.value.message


def test_good_fixtures_decode() -> None:
    """The bad cases are one change away from these, so each fails for its stated reason."""
    assert _decode(orjson.dumps(_json_doc()), None).rows == 2
    assert _decode(*_good_binary()).tensors["text"].tolist() == [b"a", b"bc"]
    assert _decode(orjson.dumps(_json_doc(rows=32)), None).rows == 32
    # JSON integers are numbers: fine for a float input, no casting of the datatype.
    x = _decode(_with("x.data", list(range(8))), None).tensors["x"]
    assert x.dtype == np.float32 and x[1, 3] == 7.0


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("INT8", 128), ("UINT8", -1), ("UINT16", 70000), ("INT32", 2**31), ("FP16", 70000.0)],
)
def test_out_of_range_values_for_narrow_types(datatype: str, value: float) -> None:
    spec = TensorSpec("v", datatype, (-1,))
    body = orjson.dumps(
        {"inputs": [{"name": "v", "datatype": datatype, "shape": [1], "data": [value]}]}
    )
    with pytest.raises(SurgeError) as caught:
        decode_infer_request(body, None, [spec], [spec], MAX_ROWS)
    assert caught.value.status == 400
    assert f"'v': a value is out of range for {datatype}" in caught.value.message


def test_bool_binary_bytes_must_be_0_or_1() -> None:
    spec = TensorSpec("b", "BOOL", (-1,))
    body, header_length = _binary([("b", "BOOL", [2], bytes([1, 2]))])
    with pytest.raises(SurgeError) as caught:
        decode_infer_request(body, header_length, [spec], [spec], MAX_ROWS)
    assert "'b': BOOL binary data must hold only bytes 0 and 1" in caught.value.message
