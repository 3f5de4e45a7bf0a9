"""The event-stream parser: whatever way the network cuts the bytes, the same payloads
come out, and a stream that never ends an event cannot grow memory without bound."""

from __future__ import annotations

import pytest

from surge.llm.sse import SSEError, SSEParser

STREAM = (
    b": keep-alive\n\n"
    b'data: {"a": 1}\n\n'
    b"event: message\r\nid: 7\r\nretry: 100\r\ndata: first\r\ndata: second\r\n\r\n"
    b"data:no-space\r\rdata: caf\xc3\xa9\n\n"
    b"data: [DONE]\n\n"
)
EVENTS = ['{"a": 1}', "first\nsecond", "no-space", "café", "[DONE]"]


def feed_all(parser: SSEParser, chunks: list[bytes]) -> list[str]:
    events: list[str] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.close()


def test_whole_stream_at_once() -> None:
    assert feed_all(SSEParser(), [STREAM]) == EVENTS


def test_cut_at_every_byte() -> None:
    # Cuts between \r and \n, inside a multi-byte character, inside `data:`.
    assert feed_all(SSEParser(), [STREAM[i : i + 1] for i in range(len(STREAM))]) == EVENTS


def test_cut_anywhere_in_two() -> None:
    for cut in range(len(STREAM) + 1):
        assert feed_all(SSEParser(), [STREAM[:cut], STREAM[cut:]]) == EVENTS, cut


def test_crlf_split_across_chunks_is_one_line_break() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []  # the \n pairs with the \r: no blank line yet
    assert parser.feed(b"\n\r\n") == ["a\nb"]


def test_events_come_out_as_soon_as_they_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: one\n\ndata: tw") == ["one"]
    assert parser.feed(b"o\n") == []
    assert parser.feed(b"\n") == ["two"]


def test_comments_and_other_fields_are_not_events() -> None:
    parser = SSEParser()
    assert parser.feed(b": ping\n\nevent: x\nid: 1\n\n:\n\n") == []


def test_empty_data_line_is_an_empty_payload() -> None:
    assert SSEParser().feed(b"data\n\ndata:\n\n") == ["", ""]


def test_byte_order_mark_at_start_is_skipped() -> None:
    assert SSEParser().feed(b"\xef\xbb\xbfdata: x\n\n") == ["x"]


def test_close_delivers_an_event_without_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]\n") == []
    assert parser.close() == ["[DONE]"]
    other = SSEParser()
    assert other.feed(b"data: [DONE]") == []
    assert other.close() == ["[DONE]"]


def test_a_line_without_end_is_bounded() -> None:
    parser = SSEParser(max_buffer_bytes=1024)
    parser.feed(b"data: " + b"x" * 1000)
    with pytest.raises(SSEError):
        parser.feed(b"x" * 100)


def test_an_event_without_end_is_bounded() -> None:
    parser = SSEParser(max_buffer_bytes=1024)
    with pytest.raises(SSEError):
        for _ in range(100):
            parser.feed(b"data: " + b"x" * 50 + b"\n")


def test_default_bound_is_one_mebibyte() -> None:
    parser = SSEParser()
    parser.feed(b"data: " + b"x" * 1_000_000)
    with pytest.raises(SSEError):
        parser.feed(b"x" * 100_000)
