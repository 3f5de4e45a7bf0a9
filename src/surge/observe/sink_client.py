"""The server's end of the receipt sink (observe/receipt_sink.py): starts the child,
sends it frames from the receipt writer's thread, and counts what it stored from its
replies on a reader thread.

A frame the child never answered (it died) and a frame it could not store are counted
as dropped, so `written + dropped` always accounts for every receipt sent. A dead child
is restarted on the next send.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from typing import IO

import orjson

from surge.observe.receipt_sink import URL_VARIABLE, write_frame

log = logging.getLogger("surge.receipts")


class SinkClient:
    def __init__(self, url: str, namespace: str = "surge") -> None:
        self.url = url
        self.namespace = namespace
        self.written = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._pending: deque[int] = deque()  # receipts per unanswered frame (-1: a delete)
        self._sent = 0  # frames sent
        self._answered = 0  # frames answered or given up on
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        # The URL (maybe with a password) goes in the child's environment, which only its
        # user can read, not in its argv, which `ps` shows everyone.
        process = subprocess.Popen(
            [sys.executable, "-m", "surge.observe.receipt_sink", self.namespace],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, URL_VARIABLE: self.url},
        )
        assert process.stdout is not None
        self._reader = threading.Thread(
            target=self._read_replies, args=(process.stdout,), name="receipt-sink", daemon=True
        )
        self._reader.start()
        return process

    def send(self, records: list[dict]) -> None:
        self._send(orjson.dumps(records), len(records))

    def delete_before(self, cutoff: float) -> None:
        self._send(orjson.dumps({"delete_before": cutoff}), -1)

    def _send(self, payload: bytes, receipts: int) -> None:
        """Called from one thread at a time (the receipt writer's)."""
        process = self._process
        if process is None or process.poll() is not None:
            if process is not None and process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            process = self._process = self._start()
        with self._lock:
            self._pending.append(receipts)
            self._sent += 1
        try:
            assert process.stdin is not None
            write_frame(process.stdin, payload)
        except (BrokenPipeError, OSError) as exc:
            log.warning("the receipt sink is gone (%s); it restarts on the next batch", exc)
            # Its reader thread sees the end of its output and settles what is pending.

    def _read_replies(self, replies: IO[bytes]) -> None:
        for line in replies:
            status, _, rest = line.decode().rstrip("\n").partition(" ")
            with self._lock:
                receipts = self._pending.popleft() if self._pending else 0
                self._answered += 1
                if receipts < 0:
                    continue
                if status == "ok":
                    self.written += receipts
                else:
                    self.failed += receipts
                    log.warning("could not store %d receipts: %s", receipts, rest)
        with self._lock:  # the child exited: nothing pending will ever be answered
            while self._pending:
                receipts = self._pending.popleft()
                self.failed += max(0, receipts)
                self._answered += 1
        replies.close()

    def settled(self) -> bool:
        with self._lock:
            return self._answered >= self._sent

    def wait_settled(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.settled():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        process = self._process
        if process is None:
            return
        self.wait_settled(timeout_s)
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if self._reader is not None:
            self._reader.join(timeout_s)
