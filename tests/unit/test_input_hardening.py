"""Hostile request bodies and headers get a 400 naming what to fix, never a 500, and are
refused on their counts and sizes before any per-item work."""

from __future__ import annotations

import orjson
import pytest

from surge.api.http import byte_count
from surge.api.openai import _parse, _texts
from surge.api.v2_codec import decode_infer_request
from surge.core.errors import SurgeError
from surge.core.tensors import TensorSpec

INPUTS = [TensorSpec("x", "FP32", (-1, 4))]
OUTPUTS = [TensorSpec("y", "FP32", (-1, 4))]


def _v2(data: bytes, shape: str = "[1,4]", parameters: bytes = b"{}") -> bytes:
    return (
        b'{"parameters":' + parameters + b',"inputs":[{"name":"x","datatype":"FP32","shape":'
        + shape.encode() + b',"data":' + data + b"}]}"
    )  # fmt: skip


def _refused(call) -> str:
    with pytest.raises(SurgeError) as caught:
        call()
    assert caught.value.status == 400
    return caught.value.message


def _decode(body: bytes):
    return decode_infer_request(body, None, INPUTS, OUTPUTS, 64)


def test_v2_data_nested_a_thousand_deep_is_a_400_naming_the_depth():
    deep = b"[" * 1000 + b"1.0" + b"]" * 1000  # orjson parses it; recursion used to follow it
    message = _refused(lambda: _decode(_v2(deep)))
    assert "nested deeper than its shape's 2 dimension(s)" in message


def test_v2_nested_data_as_deep_as_the_shape_still_decodes():
    parsed = _decode(_v2(b"[[1, 2, 3, 4]]"))
    assert parsed.tensors["x"].tolist() == [[1, 2, 3, 4]]
    flat = _decode(_v2(b"[1, 2, 3, 4, 5, 6, 7, 8]", shape="[2,4]"))
    assert flat.tensors["x"].shape == (2, 4)


def test_v2_shape_declaring_more_elements_than_the_body_holds_is_refused_up_front():
    # A shape of 4 billion elements against a body of a few dozen bytes: refused on the
    # numbers, naming both, before the data is walked.
    body = _v2(b"[1, 2, 3, 4]", shape="[1,4294967296]")
    any_width = [TensorSpec("x", "FP32", (-1, -1))]
    message = _refused(lambda: decode_infer_request(body, None, any_width, OUTPUTS, 64))
    assert "declares 4294967296 elements" in message and "can hold at most" in message


def test_v2_parameters_nested_past_the_limit_are_refused():
    deep = b'{"a":' * 500 + b"1" + b"}" * 500  # str() or a receipt would recurse on it
    message = _refused(lambda: _decode(_v2(b"[1, 2, 3, 4]", parameters=deep)))
    assert "request 'parameters' are nested more than" in message
    shallow = b'{"tenant": {"tier": "gold"}, "user": "u1"}'
    assert _decode(_v2(b"[1, 2, 3, 4]", parameters=shallow)).parameters["user"] == "u1"


@pytest.mark.parametrize("raw", ["\u00b2", "\u0661\u0662", "-1", "1e3", " 12", "9" * 5000, ""])
def test_byte_count_headers_take_ascii_digits_only(raw):
    # '²' and Arabic-Indic digits pass str.isdigit() but not int(); 5,000 digits pass
    # both checks but int() refuses them: each was a 500.
    message = _refused(lambda: byte_count(raw, "Inference-Header-Content-Length"))
    assert "Inference-Header-Content-Length must be a byte count" in message


def test_byte_count_reads_a_plain_count():
    assert byte_count("1024", "Content-Length") == 1024


def test_v2_header_length_past_the_body_is_a_400():
    body = _v2(b"[1, 2, 3, 4]")
    message = _refused(lambda: decode_infer_request(body, 10**17, INPUTS, OUTPUTS, 64))
    assert "Inference-Header-Content-Length is 100000000000000000" in message


# -- OpenAI embeddings ------------------------------------------------------------------


def _embeddings(**fields) -> bytes:
    return orjson.dumps({"model": "embed", **fields})


def test_openai_input_count_is_checked_before_any_item():
    # A million items, the last not a string: the count limit answers, not the type check
    # that would have walked every item first.
    inputs = _parse(_embeddings(input=["a"] * 1_000_000 + [[1, 2]])).inputs
    message = _refused(lambda: _texts(inputs, 32, 1_000_000))
    assert message == "'input' has 1000001 strings; at most 32 per request"


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ([[1, 2]], "item 0 is list"),  # token arrays
        (["ok", [["deep"]]], "item 1 is list"),
        (["ok", 2**63 - 1], "item 1 is int"),
        (["ok", None], "item 1 is NoneType"),
    ],
)
def test_openai_hostile_items_are_400s_naming_the_item(value, needle):
    inputs = _parse(_embeddings(input=value)).inputs
    assert needle in _refused(lambda: _texts(inputs, 32, 1_000_000))


def test_openai_a_string_longer_than_a_body_may_carry_is_refused():
    inputs = _parse(_embeddings(input=["short", "x" * 101])).inputs
    message = _refused(lambda: _texts(inputs, 32, 100))
    assert message == "'input' item 1 is 101 bytes; at most 100 per string"
    assert _texts(["h\u00e9llo"], 32, 100) == ["h\u00e9llo".encode()]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"model": "embed", "input": "x", "dimensions": true}', "'dimensions'"),
        (b'{"model": "embed", "input": "x", "dimensions": 1e400}', "not valid JSON"),
        (b'{"model": "embed", "input": "x", "dimensions": 123456789012345678901234}', "dim"),
        (b'{"model": "embed", "input": "x", "encoding_format": false}', "'encoding_format'"),
        (b'{"model": "embed", "input": "x", "encoding_format": [1]}', "got list"),
        (b'{"model": "embed", "input": [NaN]}', "not valid JSON"),
        (b'{"model": "embed", "input": "x", "user": {"id": 1}}', "'user' must be a string"),
    ],
)
def test_openai_hostile_fields_are_400s(body, needle):
    assert needle in _refused(lambda: _parse(body))


def test_openai_error_messages_do_not_echo_a_megabyte():
    body = orjson.dumps({"model": "embed", "input": "x", "encoding_format": "h" * 1_000_000})
    assert len(_refused(lambda: _parse(body))) < 200
