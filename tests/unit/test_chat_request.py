"""Chat request bodies: what is read, what is refused (400 naming the field), and that a
client's unknown fields never reach a backend."""

from __future__ import annotations

import orjson
import pytest

from surge.core.errors import SurgeError
from surge.llm.chat_request import parse_chat_request
from surge.llm.openai_chunks import ChunkWriter, completion
from surge.llm.stream import Piece, Usage


def body(**fields: object) -> bytes:
    doc = {"model": "chat", "messages": [{"role": "user", "content": "hello there"}], **fields}
    return orjson.dumps(doc)


def refused(raw: bytes) -> str:
    with pytest.raises(SurgeError) as err:
        parse_chat_request(raw)
    assert err.value.status == 400
    return err.value.message


def test_a_plain_request_is_read_with_its_options() -> None:
    req = parse_chat_request(
        body(
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=20,
            temperature=0,
            stop="END",
            seed=7,
            logprobs=True,
            top_logprobs=2,
            user="u1",
        )
    )
    assert req.model == "chat" and req.stream and req.include_usage
    assert req.max_tokens_asked == 20 and req.prompt_chars == len("hello there")
    call = req.call
    assert call.temperature == 0.0 and call.stop == ("END",) and call.seed == 7
    assert call.logprobs and call.top_logprobs == 2 and call.user == "u1"
    assert call.messages == ({"role": "user", "content": "hello there"},)


def test_text_parts_are_joined_and_unknown_fields_are_not_kept() -> None:
    raw = orjson.dumps(
        {
            "model": "chat",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    "secret_field": "x",
                }
            ],
            "metadata": {"anything": 1},
        }
    )
    req = parse_chat_request(raw)
    assert req.call.messages == ({"role": "user", "content": "ab"},)
    assert req.max_tokens_asked is None  # the model's default applies later


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (orjson.dumps({"messages": []}), "'model'"),
        (body(messages=[]), "'messages'"),
        (body(messages=[{"role": "wizard", "content": "x"}]), "role"),
        (body(messages=[{"role": {"a": 1}, "content": "x"}]), "role"),
        (body(messages=[{"role": ["user"], "content": "x"}]), "role"),
        (body(messages=[{"role": "user", "content": 5}]), "content"),
        (body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "text part"),
        (body(max_tokens=0), "'max_tokens'"),
        (body(max_tokens=True), "'max_tokens'"),
        (body(temperature=3), "'temperature'"),
        (body(temperature="hot"), "'temperature'"),
        (body(n=2), "'n'"),
        (body(stop=["a", "b", "c", "d", "e"]), "'stop'"),
        (body(top_logprobs=3), "'top_logprobs'"),
        (body(tools=[{"type": "function"}]), "'tools'"),
        (body(stream="yes"), "'stream'"),
        (body(stream_options={"include_usage": True}), "stream_options"),
        (body(user="u" * 1000), "'user'"),
    ],
)
def test_faults_are_400s_that_name_the_field(raw: bytes, names: str) -> None:
    assert names in refused(raw)


def test_stream_chunks_are_openai_shaped() -> None:
    writer = ChunkWriter("chatcmpl-1", "chat", with_logprobs=False)
    role = orjson.loads(writer.role()[len(b"data: ") :])
    assert role["object"] == "chat.completion.chunk" and role["model"] == "chat"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    piece = orjson.loads(writer.piece(Piece('say "hi"\n', [-0.5]))[len(b"data: ") :])
    assert piece["choices"][0]["delta"]["content"] == 'say "hi"\n'
    assert piece["choices"][0]["logprobs"] is None and piece["id"] == "chatcmpl-1"
    end = orjson.loads(writer.finish("deadline")[len(b"data: ") :])
    assert end["choices"][0]["finish_reason"] == "deadline"
    usage = orjson.loads(writer.usage(Usage(3, 4))[len(b"data: ") :])
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    whole = orjson.loads(completion("c", "chat", "hi", "stop", Usage(1, 1), None))
    assert whole["choices"][0]["message"]["content"] == "hi"
