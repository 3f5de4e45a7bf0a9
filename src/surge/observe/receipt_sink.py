"""The receipt sink: a child process that stores receipt records, so the server's GIL
never runs the insert.

Why a process: measured on the no-op endpoint, any per-receipt Python work on a thread
of the server (building the row, encoding it, binding SQLite parameters) competes with
the event loop for the GIL and cost 17-28 % of throughput; one `orjson.dumps` of the
whole batch cost nothing measurable. So the server sends each batch as one JSON frame
down a pipe, and this process does the rest on the other core.

Protocol, both ways binary and line-simple:
- in (stdin): frames of a 4-byte big-endian length, then JSON: a list of records
  (`observe.receipt.record_of`), or {"delete_before": epoch_seconds}.
- out (stdout): one line per frame: `ok <stored>` or `err <count> <message>`.

The store's URL comes in the environment (`URL_VARIABLE`), not in argv: a PostgreSQL
URL may carry a password, and any user on the host can read a process's argv (`ps`).
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from typing import BinaryIO

import orjson

from surge.store.receipts import ReceiptTable
from surge.store.registry import open_store

HEADER = struct.Struct(">I")
URL_VARIABLE = "SURGE_RECEIPT_SINK_URL"


def write_frame(pipe: BinaryIO, payload: bytes) -> None:
    pipe.write(HEADER.pack(len(payload)) + payload)
    pipe.flush()


def read_frame(pipe: BinaryIO) -> bytes | None:
    header = pipe.read(HEADER.size)
    if len(header) < HEADER.size:
        return None  # the server closed the pipe: time to go
    (length,) = HEADER.unpack(header)
    return pipe.read(length)


def serve(store: ReceiptTable, inbox: BinaryIO, outbox: BinaryIO) -> None:
    while (frame := read_frame(inbox)) is not None:
        message = orjson.loads(frame)
        try:
            if isinstance(message, dict):
                done = store.delete_receipts_before(float(message["delete_before"]))
            else:
                done = store.add_receipts(message)
            reply = f"ok {done}\n"
        except Exception as exc:  # reported to the server, which counts the loss
            count = len(message) if isinstance(message, list) else 0
            reply = f"err {count} {type(exc).__name__}: {exc}".replace("\n", " ") + "\n"
        outbox.write(reply.encode())
        outbox.flush()


def main() -> None:
    # Ctrl-C or a SIGTERM to the process group is the server's to handle: the sink stores
    # what the server's last flush sends and exits when the server closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Taken out of the environment, so nothing this process starts inherits it.
    url, namespace = os.environ.pop(URL_VARIABLE, None), sys.argv[1]
    if url is None:
        sys.exit(f"{URL_VARIABLE} is not set: the server starts this process (sink_client.py)")
    store = open_store(url, namespace)
    assert isinstance(store, ReceiptTable)
    try:
        serve(store, sys.stdin.buffer, sys.stdout.buffer)
    finally:
        store.close()


if __name__ == "__main__":
    main()
