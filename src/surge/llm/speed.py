"""How fast each chat model answers, and the time-boxed choice that reads it (sans-IO).

A language model's time is two numbers, not one: the time to its first token (TTFT:
queueing, the prompt's prefill, the network) and its decode rate (tokens per second
after the first). An answer of n tokens takes about `ttft + (n - 1) / rate`. Both are
learned per model from finished answers as exponentially weighted means, so a provider
that slows down is seen within a few answers; until a model has answered, its
configured prior stands in.

`choose_in_time` is the time-boxed policy: the best model (listed first) whose estimate
for the answer's `max_tokens` fits in the time left; when none does, the model that can
give the most tokens in that time, with `max_tokens` capped to what fits, marked
degraded; when not even `min_tokens` fit anywhere, no choice (the caller answers 504).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

EWMA_WEIGHT = 0.2  # each new answer's share: about the last 5-10 answers dominate


@dataclass
class ModelSpeed:
    ttft_s: float = 0.5  # priors until the model has answered
    tokens_per_s: float = 20.0
    answers: int = 0

    def observe(self, ttft_s: float, tokens: int, decode_s: float) -> None:
        """One finished answer: its time to first token, and `tokens` tokens in total of
        which all after the first took `decode_s`."""
        if not ttft_s >= 0:  # also refuses NaN
            return
        w = 1.0 if self.answers == 0 else EWMA_WEIGHT
        self.ttft_s += w * (ttft_s - self.ttft_s)
        if tokens > 1 and decode_s > 0:
            rate = (tokens - 1) / decode_s
            wr = 1.0 if self.answers == 0 else EWMA_WEIGHT
            self.tokens_per_s += wr * (rate - self.tokens_per_s)
        self.answers += 1

    def estimate_s(self, tokens: int) -> float:
        return self.ttft_s + max(0, tokens - 1) / self.tokens_per_s

    def tokens_within(self, seconds: float) -> int:
        """The most tokens an answer can have and still end within `seconds`."""
        if seconds < self.ttft_s:
            return 0
        return 1 + int((seconds - self.ttft_s) * self.tokens_per_s)


@dataclass(frozen=True)
class TimeBoxChoice:
    model: str
    max_tokens: int
    degraded: bool  # not the best model, or fewer tokens than asked
    estimate_s: float
    reason: str


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def choose_in_time(
    models: Sequence[str],
    speeds: Mapping[str, ModelSpeed],
    remaining_s: float,
    max_tokens: int,
    safety_margin: float = 0.9,
    min_tokens: int = 16,
) -> TimeBoxChoice | None:
    if not models:
        raise ValueError("a time-boxed route needs at least one model")
    usable = remaining_s * safety_margin
    best = models[0]
    for i, name in enumerate(models):
        need = speeds[name].estimate_s(max_tokens)
        if need <= usable:
            if i == 0:
                why = (f"{name} fits: ~{_ms(need)} ms for {max_tokens} tokens, "
                       f"{_ms(remaining_s)} ms left")  # fmt: skip
            else:
                first = speeds[best].estimate_s(max_tokens)
                why = (f"{best} needs ~{_ms(first)} ms for {max_tokens} tokens, "
                       f"{_ms(remaining_s)} ms left: {name} (~{_ms(need)} ms)")  # fmt: skip
            return TimeBoxChoice(name, max_tokens, i > 0, need, why)
    # Nothing gives the whole answer in time: the model that gives the most of it.
    most, name = max((speeds[n].tokens_within(usable), -i) for i, n in enumerate(models))
    chosen = models[-name]
    if most < min(min_tokens, max_tokens):
        return None
    capped = min(most, max_tokens)
    why = (f"no model gives {max_tokens} tokens in {_ms(remaining_s)} ms: {chosen} "
           f"capped to {capped} tokens")  # fmt: skip
    return TimeBoxChoice(chosen, capped, True, speeds[chosen].estimate_s(capped), why)
