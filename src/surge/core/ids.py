from __future__ import annotations

import os

MAX_REQUEST_ID_LEN = 128
ID_HEX = 32  # 16 random bytes, as hex
_POOL_IDS = 256


class _RandomIds:
    """Request ids of 16 random bytes each, drawn from the OS 4 KiB at a time: one
    `os.urandom` call per request was a system call (and a GIL release) on the hot path.
    Ids stay unpredictable: they name requests that feedback and receipts refer to.
    Called on the event loop's thread only."""

    def __init__(self) -> None:
        self._pool = ""
        self._next = 0

    def __call__(self) -> str:
        start = self._next
        if start >= len(self._pool):
            self._pool = os.urandom(16 * _POOL_IDS).hex()
            start = 0
        self._next = start + ID_HEX
        return self._pool[start : start + ID_HEX]


new_request_id = _RandomIds()


def accept_request_id(client_value: str | None) -> str:
    """Keep a client's id when it is printable and short; otherwise mint one."""
    if client_value and len(client_value) <= MAX_REQUEST_ID_LEN and client_value.isprintable():
        return client_value
    return new_request_id()
