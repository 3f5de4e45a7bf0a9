from __future__ import annotations

import os

MAX_REQUEST_ID_LEN = 128


def new_request_id() -> str:
    # 16 random bytes as hex: unique enough for correlation, cheap to make.
    return os.urandom(16).hex()


def accept_request_id(client_value: str | None) -> str:
    """Keep a client's id when it is printable and short; otherwise mint one."""
    if client_value and len(client_value) <= MAX_REQUEST_ID_LEN and client_value.isprintable():
        return client_value
    return new_request_id()
