"""A fake OpenAI-compatible LLM server on 127.0.0.1, for tests and benchmarks.

`FakeLLM` is a plain ASGI app served by uvicorn in a background thread (or in its own
process: `python -m tests.fake_llm --port 9000`, for a benchmark that must not share a
GIL with the gateway). It answers `POST /v1/chat/completions`, streamed (SSE chunks as
OpenAI sends them: a role-only first chunk, one chunk per token, a finish chunk, a
usage chunk when `stream_options.include_usage`, `[DONE]`) or not, and `GET /v1/models`.

The answer is deterministic: `tokens` words "tok0 tok1 ..." (or the words of `reply`),
cut at the request's `max_tokens` with finish_reason "length". A prompt may steer its
own answer: `tokens=N` sets its length and `confidence=-0.8` every token's logprob
(the default `logprob`), which is what a cascade test needs.

Every knob is an attribute a test may change while the server runs. The counters say
what the server saw; `cancelled` counts the calls whose client disconnected before the
answer ended (seen as `http.disconnect` from `receive()`), which is how a test proves
that closing a stream reached the upstream.

Cheap per token, as a benchmark of 1,000 streams needs: each token's chunk is a few
pre-encoded byte strings joined; nothing is logged per request.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson
import uvicorn

DEFAULT_LOGPROB = -0.05
CONFIDENCE = re.compile(r"confidence=(-?\d+(?:\.\d+)?)")
TOKENS = re.compile(r"tokens=(\d+)")
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
JSON_HEADERS = [(b"content-type", b"application/json")]
DONE = b"data: [DONE]\n\n"

Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def prompt_text(messages: Any) -> str:
    """The text of all messages (string contents and text parts), space-joined."""
    texts = []
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p.get("text", "") for p in content if isinstance(p, dict)]
    return " ".join(texts)


def prompt_logprob(prompt: str) -> float:
    """`confidence=<float>` in the prompt, else DEFAULT_LOGPROB."""
    found = CONFIDENCE.search(prompt)
    return float(found.group(1)) if found else DEFAULT_LOGPROB


@lru_cache(maxsize=64)
def _default_tokens(count: int) -> tuple[str, ...]:
    return tuple(f"tok{i}" if i == 0 else f" tok{i}" for i in range(count))


@lru_cache(maxsize=4096)
def _delta(token: str) -> bytes:
    return b'"delta":{"content":' + orjson.dumps(token) + b"}"


class _Watch:
    """Cancels the task answering a call when its client disconnects."""

    def __init__(self, receive: Receive) -> None:
        self.task = asyncio.current_task()
        self.disconnected = False
        self.started = False  # the response's head was sent
        self.finished = False  # set before the last send: the disconnect after is normal
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self.finished and self.task is not None:
            self.disconnected = True
            self.task.cancel()

    def close(self) -> None:
        self._watcher.cancel()


class FakeLLM:
    """The fake server; use as a context manager (`with FakeLLM() as llm: llm.url`)."""

    def __init__(
        self,
        *,
        token_latency_s: float = 0.0,
        first_token_latency_s: float = 0.0,
        tokens: int = 8,
        reply: str | None = None,
        logprob: float | Callable[[str], float] = prompt_logprob,
        fail_with: int | None = None,
        fail_times: int | None = None,
        retry_after: str | None = None,
        hang: bool = False,
        stall_after: int | None = None,
        truncate_after: int | None = None,
        malformed: bool = False,
        omit_usage: bool = False,
        stream_as_json: bool = False,
        models: tuple[str, ...] = ("fake-model",),
        max_recorded: int = 100,
        port: int = 0,
    ) -> None:
        self.token_latency_s = token_latency_s  # between two tokens
        self.first_token_latency_s = first_token_latency_s  # from the request to token 0
        self.tokens = tokens  # the answer's length when `reply` is None
        self.reply = reply  # a fixed answer: its words are the tokens
        self.logprob = logprob  # every token's logprob: a float or f(prompt)
        self.fail_with = fail_with  # answer with this status instead (e.g. 429, 500, 503)
        self.fail_times = fail_times  # for the next N calls only; None: until cleared
        self.retry_after = retry_after  # the Retry-After header of a failure, verbatim
        self.fail_message = "the fake LLM was told to fail"
        self.hang = hang  # never answer (not even the status line)
        self.stall_after = stall_after  # send N tokens then nothing more, connection open
        self.truncate_after = truncate_after  # end the body after N tokens, no [DONE]
        self.malformed = malformed  # send a chunk of broken JSON after the first token
        self.omit_usage = omit_usage  # no usage, streamed or not
        self.stream_as_json = stream_as_json  # answer a `stream: true` call with JSON
        self.models = models
        self.port = port
        self.requests = 0  # chat calls received
        self.in_flight = 0
        self.max_in_flight = 0
        self.completed = 0  # answers sent to their end
        self.cancelled = 0  # calls whose client disconnected before the answer ended
        self.bodies: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self.auth_headers: deque[str | None] = deque(maxlen=max_recorded)
        self._calls: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail(self, status: int | None, times: int | None = None, retry_after: str | None = None):
        """Fail the next `times` calls (every call when None) with `status`; None clears."""
        self.fail_times, self.retry_after, self.fail_with = times, retry_after, status

    # -- running it -----------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> FakeLLM:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, lifespan="on",
                                log_level="warning", access_log=False, backlog=4096,
                                timeout_graceful_shutdown=2)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-llm", daemon=True)
        self._thread.start()
        give_up = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > give_up:
                raise RuntimeError("the fake LLM server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """End the calls still open (a hanging one would hold uvicorn's shutdown), stop."""
        if self._server is None or self._thread is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._abort_calls)
        self._server.should_exit = True
        self._thread.join(15)
        self._server = None

    def _abort_calls(self) -> None:
        self._stopping = True
        for task in self._calls:
            task.cancel()

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the ASGI app ---------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                self._loop = asyncio.get_running_loop()
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] != "http":
            return
        elif scope["method"] == "POST" and scope["path"].endswith("/chat/completions"):
            await self._call(scope, receive, send)
        elif scope["method"] == "GET" and scope["path"].endswith("/models"):
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]
            await _respond(send, 200, {"object": "list", "data": data})
        else:
            await _respond(send, 404, {"error": {"message": "not found", "type": "not_found"}})

    async def _call(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        raw = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests += 1
        auth = dict(scope["headers"]).get(b"authorization")
        self.auth_headers.append(auth.decode("latin-1") if auth is not None else None)
        try:
            body = orjson.loads(raw)
            messages = body["messages"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            error = {"error": {"message": "a JSON body with messages", "type": "invalid_request"}}
            await _respond(send, 400, error)
            return
        self.bodies.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        watch = _Watch(receive)
        try:
            await self._answer(body, prompt_text(messages), send, watch)
            self.completed += 1
        except asyncio.CancelledError:
            if not (watch.disconnected or self._stopping):
                raise
            task.uncancel()
            if watch.disconnected:
                self.cancelled += 1
            elif watch.started:  # stopping: end what was started
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await _respond(send, 503, {"error": {"message": "stopping"}})
        finally:
            watch.close()
            self._calls.discard(task)
            self.in_flight -= 1

    async def _answer(self, body: dict[str, Any], prompt: str, send: Send, watch: _Watch):
        status = self._take_failure()
        if status is not None:
            watch.finished = watch.started = True
            headers = [*JSON_HEADERS]
            if self.retry_after is not None:
                headers.append((b"retry-after", self.retry_after.encode()))
            error = {"error": {"message": self.fail_message, "type": "fake", "code": status}}
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": orjson.dumps(error)})
            return
        if self.hang:
            await asyncio.Future()  # until the client leaves or the server stops
        tokens = self.reply.split() if self.reply is not None else None
        if tokens is None:
            found = TOKENS.search(prompt)
            answer = _default_tokens(int(found.group(1)) if found else self.tokens)
        else:
            answer = tuple(w if i == 0 else f" {w}" for i, w in enumerate(tokens))
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        reason = "stop"
        if isinstance(max_tokens, int) and len(answer) > max_tokens:
            answer, reason = answer[:max_tokens], "length"
        logprob = self.logprob(prompt) if callable(self.logprob) else float(self.logprob)
        top = body.get("top_logprobs") or 0
        logprobs = bool(body.get("logprobs"))
        usage = None if self.omit_usage else {
            "prompt_tokens": len(prompt.split()), "completion_tokens": len(answer),
            "total_tokens": len(prompt.split()) + len(answer)}  # fmt: skip
        model = body.get("model", self.models[0])
        head = {"id": f"chatcmpl-fake{self.requests}", "created": int(time.time()), "model": model}
        if body.get("stream") and not self.stream_as_json:
            wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            await self._stream(send, watch, head, answer, reason, logprob if logprobs else None,
                               top, usage if wants_usage else None)  # fmt: skip
            return
        await asyncio.sleep(
            self.first_token_latency_s + self.token_latency_s * max(0, len(answer) - 1)
        )
        entries = [_entry(t, logprob, top) for t in answer] if logprobs else None
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(answer)},
            "logprobs": {"content": entries} if logprobs else None,
            "finish_reason": reason,
        }
        watch.finished = watch.started = True
        await _respond(send, 200, {**head, "object": "chat.completion", "choices": [choice],
                                   **({"usage": usage} if usage else {})})  # fmt: skip

    async def _stream(self, send: Send, watch: _Watch, head: dict[str, Any],
                      answer: tuple[str, ...], reason: str, logprob: float | None, top: int,
                      usage: dict[str, int] | None) -> None:  # fmt: skip
        watch.started = True
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        prefix = b"data: " + orjson.dumps({**head, "object": "chat.completion.chunk"})[:-1]
        prefix += b',"choices":[{"index":0,'
        no_reason = b',"finish_reason":null}]}\n\n'
        no_logprobs = b',"logprobs":null' + no_reason
        role = prefix + b'"delta":{"role":"assistant","content":""}' + no_logprobs
        await send({"type": "http.response.body", "body": role, "more_body": True})
        for i, token in enumerate(answer):
            await asyncio.sleep(self.first_token_latency_s if i == 0 else self.token_latency_s)
            if i == self.stall_after:
                await asyncio.Future()  # until the client leaves or the server stops
            if i == self.truncate_after:
                watch.finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if logprob is None:
                chunk = prefix + _delta(token) + no_logprobs
            else:
                lp = orjson.dumps({"content": [_entry(token, logprob, top)]})
                chunk = prefix + _delta(token) + b',"logprobs":' + lp + no_reason
            if i == 1 and self.malformed:
                chunk = b'data: {"choices": [{"delta": {"content": "broken\n\n'
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        end = prefix + b'"delta":{},"logprobs":null,"finish_reason":"%s"}]}\n\n' % reason.encode()
        if usage is not None:
            end += b"data: " + orjson.dumps({**head, "object": "chat.completion.chunk",
                                            "choices": [], "usage": usage}) + b"\n\n"  # fmt: skip
        watch.finished = True
        await send({"type": "http.response.body", "body": end + DONE, "more_body": False})

    def _take_failure(self) -> int | None:
        status = self.fail_with
        if status is not None and self.fail_times is not None:
            self.fail_times -= 1
            if self.fail_times <= 0:
                self.fail_with = self.fail_times = None
        return status


def _entry(token: str, logprob: float, top: int) -> dict[str, Any]:
    entry = {"token": token, "logprob": logprob, "bytes": list(token.encode())}
    return {**entry, "top_logprobs": [entry] if top else []}


async def _respond(send: Send, status: int, body: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


def main() -> None:
    """Serve a FakeLLM in the foreground (for benchmarks run in their own process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--token-latency-s", type=float, default=0.05)
    parser.add_argument("--first-token-latency-s", type=float, default=0.1)
    parser.add_argument("--tokens", type=int, default=20)
    args = parser.parse_args()
    app = FakeLLM(token_latency_s=args.token_latency_s, tokens=args.tokens,
                  first_token_latency_s=args.first_token_latency_s)  # fmt: skip
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, backlog=4096)  # fmt: skip


if __name__ == "__main__":
    main()
