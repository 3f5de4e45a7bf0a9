"""An incremental parser of server-sent events (the stream an OpenAI-compatible server
answers a `stream: true` chat request with), sans-IO: feed it bytes as they arrive, get
back the `data` payloads of the events those bytes complete.

The network cuts the stream anywhere (inside a line, between `\\r` and `\\n`, inside a
multi-byte character), so only whole lines are decoded and interpreted; the rest waits
for the next chunk. Lines end with `\\n`, `\\r\\n` or `\\r` and a blank line ends an
event, as the WHATWG spec says. Comments (`: keep-alive`) and the `event`, `id` and
`retry` fields are read past: a chat stream carries everything in `data`.

What waits is bounded: an upstream that never sends a line break, or an event that never
ends, would otherwise grow this process's memory without limit; past `max_buffer_bytes`
the parser raises `SSEError` and the caller treats the stream as broken.
"""

from __future__ import annotations

DEFAULT_MAX_BUFFER_BYTES = 1 << 20  # 1 MiB: far beyond any chat chunk, small per stream


class SSEError(ValueError):
    """The byte stream cannot be a sane event stream (a line or event past the bound)."""


class SSEParser:
    """Feed bytes with `feed`, get complete `data` payloads; `close` at end of stream."""

    __slots__ = ("_data", "_data_bytes", "_max", "_partial", "_skip_lf", "_started")

    def __init__(self, max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES) -> None:
        self._max = max_buffer_bytes
        self._partial = b""  # the start of a line whose end has not arrived yet
        self._skip_lf = False  # the last chunk ended with `\r`: a `\n` next is its pair
        self._data: list[str] = []  # `data` lines of the event being read
        self._data_bytes = 0
        self._started = False  # a byte-order mark is only skipped at the very start

    def feed(self, chunk: bytes) -> list[str]:
        """The payloads of the events that `chunk` completes, in order (often none)."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        if not self._started:
            self._started = True
            if chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
        buffer = self._partial + chunk if self._partial else chunk
        lines = buffer.splitlines()  # bytes split on \n, \r\n and \r only
        last = buffer[-1:]
        if last == b"\r":
            self._skip_lf = True
            self._partial = b""
        elif last == b"\n":
            self._partial = b""
        else:
            self._partial = lines.pop()
            if len(self._partial) > self._max:
                raise SSEError(f"an event-stream line grew past {self._max} bytes")
        events: list[str] = []
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[str]:
        """The end of the stream: an event cut short of its blank line still counts (some
        servers end with `data: [DONE]` and no blank line), an unfinished line too."""
        events: list[str] = []
        if self._partial:
            self._line(self._partial, events)
            self._partial = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
                self._data_bytes = 0
            return
        if line[:1] == b":":
            return  # a comment: servers send them to keep idle connections open
        name, colon, value = line.partition(b":")
        if name != b"data":
            return
        if colon and value[:1] == b" ":
            value = value[1:]
        self._data_bytes += len(value) + 1
        if self._data_bytes > self._max:
            raise SSEError(f"an event grew past {self._max} bytes without ending")
        self._data.append(value.decode("utf-8", "replace"))
