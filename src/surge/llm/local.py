"""The local chat runtime: a small causal LM (a `save_pretrained` directory of model and
tokenizer) run by transformers on the CPU, so a user can start without any provider.

Generation is a plain loop over the forward pass with its KV cache, one token per step,
on a worker thread that checks a stop flag and the deadline between tokens: a closed
stream or a missed deadline frees the CPU within one token. Tokens reach the event loop
by `call_soon_threadsafe`. Admission is bounded (then 429 `local_busy`): a CPU that is
behind only falls further behind with a longer queue. torch and transformers are
imported in `load()`: a server without a local model never imports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surge.core.clock import monotonic
from surge.llm.stream import BackendError, ChatCall, Finish, Piece, Usage

_Item = Piece | Finish | BackendError
# Control tokens written by the client are encoded as text: no forged turns of another role.
_TEMPLATE_ARGS = dict(add_generation_prompt=True, return_dict=True, sanitize_control_tokens=True)


def _deadline_error(started: bool = False) -> BackendError:
    return BackendError("deadline_exceeded", "the deadline passed", 504, None, started)


class _Slots:
    """Generation slots and a bounded FIFO of waiters. The generation thread releases its
    slot itself (the stream that started it may be gone, its loop closed), so the state
    sits behind a lock and a freed slot goes straight to the oldest waiter, via its loop.
    """

    def __init__(self, limit: int, max_waiting: int) -> None:
        self.limit, self.max_waiting, self.in_use = limit, max_waiting, 0
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, timeout_s: float, busy: Callable[[], BackendError]) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.in_use < self.limit and not self._waiters:
                self.in_use += 1
                return
            if len(self._waiters) >= self.max_waiting:
                raise busy()
            self._waiters.append(entry := (loop, future := loop.create_future()))
        try:
            await asyncio.wait_for(future, max(timeout_s, 0.0))
        except BaseException:
            with self._lock:
                if queued := entry in self._waiters:
                    self._waiters.remove(entry)
            if not queued and future.done() and not future.cancelled() and not future.exception():
                self.release()  # the slot came as we gave up: pass it on
            raise

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, future = self._waiters.popleft()
                with contextlib.suppress(RuntimeError):  # else its loop is closed: it is gone
                    loop.call_soon_threadsafe(self._grant, future)
                    return
            self.in_use -= 1

    def _grant(self, future: asyncio.Future[None]) -> None:  # on the waiter's loop
        if future.done():  # it gave up (cancelled, timed out) before the slot came
            self.release()
        else:
            future.set_result(None)

    def refuse_all(self, error: BackendError) -> None:
        with self._lock:
            waiters, self._waiters = list(self._waiters), deque()
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_exception(error))


@dataclass
class _Job:
    call: ChatCall
    prompt_ids: list[int]
    max_new: int
    deadline: float
    post: Callable[[_Item], None]
    cancel: threading.Event = field(default_factory=threading.Event)


class LocalChatBackend:
    """One local model: `load()` once (blocking, off the loop), then `stream()` answers."""

    def __init__(
        self,
        name: str,
        path: str | Path,
        threads: int = 1,
        max_concurrent: int = 1,
        max_waiting: int = 8,
        max_context_tokens: int | None = None,
    ) -> None:
        self.name, self.path, self.threads = name, Path(path), threads
        self.max_context_tokens = max_context_tokens  # None: the model's own limit
        self._slots = _Slots(max_concurrent, max_waiting)
        self._stopping = threading.Event()  # set by aclose: every generation stops
        self._count_lock = threading.Lock()
        self.generated_tokens = 0  # since load; with in_flight and waiting, for metrics
        self._job_s = 1.0  # moving average of a generation's duration, for Retry-After
        self._model: Any = None
        self._tokenizer: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._byte_of: dict[str, int] | None = None  # byte-level BPE's char -> byte
        self._token_bytes: dict[int, bytes] = {}

    @property
    def in_flight(self) -> int:
        return self._slots.in_use

    @property
    def waiting(self) -> int:
        return self._slots.waiting

    def load(self) -> None:
        """Load model and tokenizer and run one tiny generation, so the first request
        pays no lazy initialisation. Blocking: call it on a thread."""
        import torch
        import transformers.utils.logging as hf_logging
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # torch has one intra-op thread count per process: the last model loaded sets it,
        # and each generation sets its model's again if another model changed it.
        torch.set_num_threads(self.threads)
        hf_logging.disable_progress_bar()  # a server log has no use for loading bars
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)  # eval mode
        self._tokenizer, self._model = tokenizer, model
        eos = model.generation_config.eos_token_id  # an id, a list of ids or None
        self._eos = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        # transformers 5.x renames the forward's `past_key_values` to `cache`.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._positions: int | None = getattr(model.config, "max_position_embeddings", None)
        if self._positions is not None:  # room for at least one token after the prompt
            limit = self.max_context_tokens or self._positions
            self.max_context_tokens = min(limit, self._positions - 1)
        if type(tokenizer.backend_tokenizer.decoder).__name__ == "ByteLevel":
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        hi = ({"role": "user", "content": "Hi"},)
        warmup = _Job(ChatCall(hi, 2), self._prompt_ids(hi), 2, monotonic() + 60, lambda _: None)
        self._generate(warmup)
        self.generated_tokens = 0  # the counter is for traffic; the warm-up is not
        self._executor = ThreadPoolExecutor(self._slots.limit, f"local-llm-{self.name}")

    async def aclose(self) -> None:
        """Stop every generation (each within a token), refuse the waiters, free threads."""
        self._stopping.set()
        self._slots.refuse_all(self._closed())
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)
        self._model = None  # the memory goes back; the stop flag keeps refusing calls

    def count_tokens(self, text: str) -> int:
        """The number of tokens `text` is as model input (special-token text counts as text)."""
        encoded = self._loaded()(text, add_special_tokens=False, split_special_tokens=True)
        return len(encoded.input_ids)

    async def stream(self, call: ChatCall, deadline: float) -> AsyncIterator[Piece | Finish]:
        """Pieces of the answer as the tokens are generated, then one Finish."""
        self._loaded()
        prompt_ids = await asyncio.to_thread(self._prompt_ids, call.messages)
        limit = self.max_context_tokens
        if limit is not None and len(prompt_ids) > limit:
            message = f"the prompt is {len(prompt_ids)} tokens; {self.name} takes {limit} at most"
            raise BackendError("context_too_long", message, 400)
        room = call.max_tokens if self._positions is None else self._positions - len(prompt_ids)
        try:
            await self._slots.acquire(deadline - monotonic(), self._busy)
        except TimeoutError:  # the deadline passed in the queue
            raise _deadline_error() from None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()

        def post(item: _Item) -> None:  # on the generation thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                job.cancel.set()

        job = _Job(call, prompt_ids, max(0, min(call.max_tokens, room)), deadline, post)
        try:
            if self._executor is None or self._stopping.is_set():
                raise self._closed()
            self._executor.submit(self._run, job)
        except BaseException:  # no thread will release the slot
            self._slots.release()
            raise
        started = False
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), deadline - monotonic())
                except TimeoutError:
                    raise _deadline_error(started) from None
                if isinstance(item, BackendError):
                    item.started = started
                    raise item
                yield item
                if isinstance(item, Finish):
                    return
                started = True
        finally:
            job.cancel.set()  # the thread stops within a token and frees the slot

    def _busy(self) -> BackendError:
        ahead = self._slots.in_use + self._slots.waiting
        retry_s = max(1.0, self._job_s * ahead / self._slots.limit)
        return BackendError("local_busy", f"{self.name} is busy: {ahead} ahead", 429, retry_s)

    def _closed(self) -> BackendError:
        return BackendError("local_closed", f"{self.name} is shutting down", 503)

    def _loaded(self) -> Any:
        """The tokenizer, once the model is loaded and until it is closed."""
        if self._stopping.is_set():
            raise self._closed()
        if self._model is None:
            raise BackendError("local_loading", f"{self.name} is not loaded yet", 503, 5.0)
        return self._tokenizer

    def _prompt_ids(self, messages: tuple[dict[str, Any], ...]) -> list[int]:
        """The prompt's token ids: the chat template's, or plain "role: content" lines."""
        tokenizer = self._tokenizer
        turns = [{"role": str(m.get("role", "user")), "content": _text_of(m)} for m in messages]
        if tokenizer.chat_template:
            try:
                encoded = tokenizer.apply_chat_template(turns, **_TEMPLATE_ARGS)
            except Exception as e:  # the template rejected the conversation (jinja raise)
                raise BackendError("invalid_messages", f"{self.name}: {e}", 400) from e
            return list(encoded["input_ids"])
        text = "".join(f"{t['role']}: {t['content']}\n" for t in turns)
        return list(tokenizer(text + "assistant:", split_special_tokens=True).input_ids)

    def _run(self, job: _Job) -> None:
        begun = monotonic()
        try:
            self._generate(job)
        except Exception as e:
            job.post(BackendError("local_failed", f"{self.name} failed: {e}", 502))
        finally:
            self._slots.release()
            self._job_s = 0.8 * self._job_s + 0.2 * (monotonic() - begun)

    def _generate(self, job: _Job) -> None:
        import torch
        from transformers import DynamicCache

        if torch.get_num_threads() != self.threads:  # process-wide in torch: see load()
            torch.set_num_threads(self.threads)
        call, tokenizer = job.call, self._tokenizer
        stops = [s for s in call.stop if s]
        seed = call.seed if call.seed is not None else secrets.randbits(63)
        generator = torch.Generator().manual_seed(seed)
        counts = torch.zeros(self._model.config.vocab_size)
        generated: list[int] = []
        sent, text, reason = "", "", "length"
        lps: list[float] = []
        entries: list[dict[str, Any]] | None = [] if call.logprobs else None
        with torch.inference_mode():
            fed = torch.tensor([job.prompt_ids])
            # Filled in place by each forward pass: the prompt is read once.
            cache = {self._cache_kwarg: DynamicCache(config=self._model.config)}
            for _ in range(job.max_new):
                if job.cancel.is_set() or self._stopping.is_set():
                    return
                if monotonic() >= job.deadline:
                    job.post(_deadline_error())
                    return
                # An explicit mask: a generated pad token is no padding to be masked out.
                mask = torch.ones(1, len(job.prompt_ids) + len(generated), dtype=torch.long)
                out = self._model(input_ids=fed, attention_mask=mask, use_cache=True, **cache)
                token, logprobs = _pick(out.logits[0, -1].float(), call, counts, generator)
                if token in self._eos:
                    reason = "stop"
                    break
                generated.append(token)
                counts[token] += 1
                with self._count_lock:
                    self.generated_tokens += 1
                lps.append(float(logprobs[token]))
                if entries is not None:
                    entries.append(self._entry(token, logprobs, call.top_logprobs or 0))
                text = tokenizer.decode(
                    generated, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
                cut = _find_stop(text, stops, len(sent))
                if cut is not None:
                    text, reason = text[:cut], "stop"
                    break
                end = _safe_end(text, stops)
                if end > len(sent):
                    job.post(Piece(text[len(sent) : end], lps, entries))
                    sent, lps, entries = text[:end], [], None if entries is None else []
                fed = torch.tensor([[token]])
        if len(text) > len(sent):  # what was held back for a stop string that never came
            job.post(Piece(text[len(sent) :], lps, entries))
        usage = Usage(len(job.prompt_ids), len(generated), "counted:tokenizer")
        job.post(Finish(reason, usage))

    def _entry(self, token: int, logprobs: Any, top: int) -> dict[str, Any]:
        """One OpenAI `logprobs.content` entry for a generated token."""
        entry = self._candidate(token, float(logprobs[token]))
        values, ids = logprobs.topk(min(top, logprobs.numel()))
        pairs = zip(ids.tolist(), values.tolist(), strict=True)
        alts = [(i, lp) for i, lp in pairs if lp > -1e30]  # top_p's cut tokens (-inf) are none
        return {**entry, "top_logprobs": [self._candidate(i, lp) for i, lp in alts]}

    def _candidate(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self._bytes_of(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    def _bytes_of(self, token: int) -> bytes:
        """A token's own bytes: a byte-level BPE token may be part of one UTF-8 character,
        which decoding it alone would turn into U+FFFD."""
        if (raw := self._token_bytes.get(token)) is None:
            piece, byte_of = self._tokenizer.convert_ids_to_tokens(token), self._byte_of
            if byte_of is not None and all(c in byte_of for c in piece):
                raw = bytes(byte_of[c] for c in piece)
            else:
                raw = self._tokenizer.decode([token]).encode()
            self._token_bytes[token] = raw
        return raw


def _pick(logits: Any, call: ChatCall, counts: Any, generator: Any) -> tuple[int, Any]:
    """The next token and the log-probabilities of the distribution it was drawn from
    (after penalties, temperature and top_p): greedy when temperature is 0 or unset."""
    import torch

    if call.presence_penalty or call.frequency_penalty:  # OpenAI's definitions
        logits = logits - (counts > 0) * (call.presence_penalty or 0.0)
        logits = logits - counts * (call.frequency_penalty or 0.0)
    if not call.temperature:
        return int(logits.argmax()), torch.log_softmax(logits, -1)
    logits = logits / call.temperature
    if call.top_p is not None and call.top_p < 1.0:
        ordered, order = logits.sort(descending=True)
        probs = ordered.softmax(-1)
        outside = probs.cumsum(-1) - probs >= call.top_p  # the mass before it suffices
        outside[0] = False
        logits = logits.index_fill(0, order[outside], float("-inf"))
    logprobs = torch.log_softmax(logits, -1)
    token = torch.multinomial(logprobs.exp(), 1, generator=generator)
    return int(token), logprobs


def _find_stop(text: str, stops: list[str], sent: int) -> int | None:
    """Where the first stop string starts, looking only where a new one can be."""
    found = [i for s in stops if (i := text.find(s, max(0, sent - len(s) + 1))) >= 0]
    return min(found) if found else None


def _safe_end(text: str, stops: list[str]) -> int:
    """How much of `text` can be sent: not a trailing incomplete character (U+FFFD until
    its next bytes arrive) nor a tail that may be the start of a stop string."""
    end = len(text.rstrip("\ufffd"))
    held = 0
    for s in stops:
        for k in range(min(len(s) - 1, end), held, -1):
            if text.endswith(s[:k], 0, end):
                held = k
                break
    return end - held


def _text_of(message: dict[str, Any]) -> str:
    if not isinstance(content := message.get("content"), list):  # a string, or None
        return "" if content is None else str(content)
    kinds = {p.get("type") if isinstance(p, dict) else type(p).__name__ for p in content}
    if kinds - {"text"}:
        message = f"the local model reads text parts only, not {sorted(map(str, kinds))}"
        raise BackendError("unsupported_content", message, 400)
    return "".join(str(part.get("text", "")) for part in content)
