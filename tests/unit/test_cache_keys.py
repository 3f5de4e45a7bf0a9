"""Cache keys: equal inputs to one model version give one key whatever their memory
layout or the order they were named in; anything that can change the answer (a value,
a dtype, a shape, a parameter, the version, the tenant) gives another."""

from __future__ import annotations

import numpy as np
import pytest

from surge.cache.keys import (
    Uncacheable,
    chat_key,
    endpoint_key,
    endpoint_prefix,
    is_deterministic_chat,
    model_identity,
    row_keys,
    tensor_key,
)

V1 = model_identity("embed", "1", "sha256:aaaa")
V2 = model_identity("embed", "2", "sha256:bbbb")


def texts(*items: str | bytes) -> np.ndarray:
    return np.array(items, dtype=object)


def test_a_key_is_32_hex_characters_and_the_same_inputs_give_the_same_key():
    inputs = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "t": texts("a", "b")}
    key = tensor_key(V1, inputs)
    assert len(key) == 32 and int(key, 16) >= 0
    again = {"t": texts("a", "b"), "x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert tensor_key(V1, again) == key  # named in another order


def test_a_new_version_or_artifact_never_shares_a_key_with_the_old_one():
    inputs = {"x": np.ones(3, np.float32)}
    same_number_new_artifact = model_identity("embed", "1", "sha256:cccc")
    keys = {tensor_key(i, inputs) for i in (V1, V2, same_number_new_artifact)}
    assert len(keys) == 3
    assert model_identity("ab", "c", "d") != model_identity("a", "bc", "d")
    assert model_identity("m", 1, "x") == model_identity("m", "1", "x")


@pytest.mark.parametrize(
    "other",
    [
        {"x": np.array([1, 2, 3, 5], np.int32)},  # a value
        {"x": np.array([1, 2, 3, 4], np.int64)},  # a dtype, same values
        {"x": np.array([1, 2, 3, 4], np.int32).reshape(2, 2)},  # a shape, same bytes
        {"x": np.array([1, 2, 3, 4], np.int32).reshape(1, 4)},  # a rank, same bytes
        {"y": np.array([1, 2, 3, 4], np.int32)},  # a name
        {"x": np.array([1, 2, 3, 4], np.int32), "z": np.zeros(0, np.int32)},  # one more input
    ],
)
def test_anything_that_can_change_the_answer_changes_the_key(other):
    assert tensor_key(V1, {"x": np.array([1, 2, 3, 4], np.int32)}) != tensor_key(V1, other)


def test_memory_layout_and_byte_order_do_not_change_the_key():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    transposed_copy = np.ascontiguousarray(a.T).T  # Fortran order, same values
    big_endian = a.astype(">f4")
    strided = np.arange(24, dtype=np.float32).reshape(3, 8)[:, ::2] / 2 * 2
    expected = tensor_key(V1, {"x": a})
    assert tensor_key(V1, {"x": transposed_copy}) == expected
    assert tensor_key(V1, {"x": big_endian}) == expected
    assert tensor_key(V1, {"x": np.array(1.0)}) != tensor_key(V1, {"x": np.array([1.0])})
    assert tensor_key(V1, {"x": np.ascontiguousarray(strided)}) == tensor_key(V1, {"x": strided})


def test_texts_are_framed_so_their_boundaries_count_and_text_equals_its_utf8_bytes():
    assert tensor_key(V1, {"t": texts("ab", "c")}) != tensor_key(V1, {"t": texts("a", "bc")})
    assert tensor_key(V1, {"t": texts("ab", "")}) != tensor_key(V1, {"t": texts("", "ab")})
    assert tensor_key(V1, {"t": texts("héllo")}) == tensor_key(V1, {"t": texts("héllo".encode())})
    assert tensor_key(V1, {"t": texts("a")}) != tensor_key(V1, {"t": np.array(["a"])})


def test_parameters_count_in_a_canonical_form():
    x = {"x": np.ones(2, np.float32)}
    base = tensor_key(V1, x, {"top_k": 3, "normalize": True})
    assert tensor_key(V1, x, {"normalize": True, "top_k": 3}) == base  # key order
    assert tensor_key(V1, x, {"normalize": True, "top_k": 3.0}) == base  # 3 == 3.0
    assert tensor_key(V1, x, {"normalize": True, "top_k": np.int64(3)}) == base
    assert tensor_key(V1, x, {"normalize": True, "top_k": 4}) != base
    assert tensor_key(V1, x, {"normalize": 1, "top_k": 3}) != base  # a bool is not a number
    assert tensor_key(V1, x, None) == tensor_key(V1, x, {})
    with pytest.raises(Uncacheable):
        tensor_key(V1, x, {"scale": float("nan")})
    with pytest.raises(Uncacheable):
        tensor_key(V1, x, {"callback": object()})


def test_the_tenant_scopes_a_key_and_no_tenant_is_a_scope_of_its_own():
    x = {"x": np.ones(2, np.float32)}
    keys = [tensor_key(V1, x, tenant=t) for t in (None, "", "acme", "zenith")]
    assert len(set(keys)) == 4


def test_inputs_without_a_canonical_form_are_refused_so_the_caller_serves_them_uncached():
    for bad in (
        {"t": np.array([1, None], dtype=object)},
        {"t": np.array(["2024-01-01"], dtype="datetime64[D]")},
        {"t": [1, 2, 3]},
        {},
    ):
        with pytest.raises(Uncacheable):
            tensor_key(V1, bad)  # type: ignore[arg-type]


def test_a_rows_key_depends_only_on_that_row_not_its_batch_or_position():
    batch = {"t": texts("a", "b", "c"), "w": np.array([[1, 2], [3, 4], [5, 6]], np.int64)}
    other = {"t": texts("z", "b"), "w": np.array([[9, 9], [3, 4]], np.int64)}
    single = {"t": texts("b"), "w": np.array([[3, 4]], np.int64)}
    keys = row_keys(V1, batch)
    assert len(keys) == 3 and len(set(keys)) == 3
    assert row_keys(V1, other)[1] == keys[1] == row_keys(V1, single)[0]
    assert row_keys(V1, other)[0] != keys[0]
    # Row keys and whole-request keys never meet, even for a batch of one.
    assert row_keys(V1, single)[0] != tensor_key(V1, single)
    assert row_keys(V1, single, tenant="acme")[0] != row_keys(V1, single)[0]
    assert row_keys(V2, single)[0] != row_keys(V1, single)[0]


def test_row_keys_of_numeric_rows_match_their_framing_in_any_layout():
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert row_keys(V1, {"x": a}) == row_keys(V1, {"x": np.asfortranarray(a).astype(">f4")})
    assert row_keys(V1, {"x": a[[2, 0]]}) == [row_keys(V1, {"x": a})[i] for i in (2, 0)]
    assert row_keys(V1, {"x": np.zeros((0, 3), np.float32)}) == []
    repeated = row_keys(V1, {"x": np.ones((5, 3), np.float32)})
    assert len(set(repeated)) == 1


def test_row_keys_need_a_shared_batch_dimension():
    with pytest.raises(Uncacheable):
        row_keys(V1, {"a": np.ones(2), "b": np.ones(3)})
    with pytest.raises(Uncacheable):
        row_keys(V1, {"a": np.float32(1.0) * np.ones(())})


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is a tensor?"},
]


def test_a_chat_key_covers_messages_and_every_parameter_that_changes_the_answer():
    params = {"temperature": 0, "max_tokens": 64}
    base = chat_key(V1, MESSAGES, params)
    reordered = [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
    assert chat_key(V1, reordered, {"max_tokens": 64, "temperature": 0.0}) == base
    # Delivery and accounting do not change what the answer says.
    delivery = {**params, "stream": True, "user": "u-42", "metadata": {"trace": "x"}}
    assert chat_key(V1, MESSAGES, delivery) == base
    changed = [
        chat_key(V1, MESSAGES, {**params, "max_tokens": 65}),
        chat_key(V1, MESSAGES, {**params, "seed": 7}),
        chat_key(V1, MESSAGES, {**params, "stop": ["\n"]}),
        chat_key(V1, MESSAGES, {**params, "tools": [{"type": "function", "name": "f"}]}),
        chat_key(V1, MESSAGES, {**params, "response_format": {"type": "json_object"}}),
        chat_key(V1, [*MESSAGES[:1], {"role": "user", "content": "What is a tensor!"}], params),
        chat_key(V1, [{"role": "user", "content": "Be brief."}, MESSAGES[1]], params),
        chat_key(V1, MESSAGES[1:], params),
        chat_key(V2, MESSAGES, params),
        chat_key(V1, MESSAGES, params, tenant="acme"),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


@pytest.mark.parametrize(
    ("params", "allow_sampling", "cacheable"),
    [
        ({"temperature": 0}, False, True),
        ({"temperature": 0.0, "top_p": 0.5}, False, True),
        ({"temperature": 0.7}, False, False),
        ({"temperature": 0.7, "seed": 42}, False, True),
        ({"temperature": 0.7, "seed": 0}, False, True),  # seed 0 is a seed
        ({}, False, False),  # the provider's default temperature samples
        ({"temperature": None}, False, False),
        (None, False, False),
        ({"seed": 3}, False, True),
        ({"temperature": "hot"}, False, False),
        ({"temperature": True}, False, False),
        ({"temperature": 0.7}, True, True),  # the endpoint allows caching samples
        ({}, True, True),
    ],
)
def test_only_deterministic_chat_requests_are_cacheable_unless_sampling_is_allowed(
    params, allow_sampling, cacheable
):
    assert is_deterministic_chat(params, allow_sampling) is cacheable


def test_keys_are_namespaced_per_endpoint_so_a_prefix_purges_one_endpoint():
    key = tensor_key(V1, {"x": np.ones(1, np.float32)})
    assert endpoint_key("embed", key) == f"embed:{key}"
    assert endpoint_key("embed", key).startswith(endpoint_prefix("embed"))
    assert not endpoint_key("embed-large", key).startswith(endpoint_prefix("embed"))
    # A name with a colon cannot reach into another endpoint's keys.
    assert not endpoint_key("embed:v2", key).startswith(endpoint_prefix("embed"))
    assert endpoint_key("a%3A", key) != endpoint_key("a:", key)
