"""Prometheus metrics of the chat gateway. Server-Timing cannot follow a stream (its
headers leave with the first token), so a stream's timings are here and on its receipt:
time to first token and time per output token, per model.

Updated on the event loop only, as plain numbers (see observe/metrics.py); turned into
metric families at scrape time. Labels are bounded: model and backend names come from
the config, outcomes and error codes from the code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from surge.observe.metrics import LoopHistogram

if TYPE_CHECKING:
    from surge.llm.answer import AnswerEnd, ChatAnswer

TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BREAKER_VALUE = {"closed": 0.0, "half_open": 0.5, "open": 1.0}


class ChatMetrics(Collector):
    def __init__(self, models: Callable[[], dict[str, Any]]) -> None:
        """`models`: the chat models by name (each with `open_streams` and
        `breaker_states()`), read at scrape time."""
        self.models = models
        self.ttft: dict[str, LoopHistogram] = {}
        self.tpot: dict[str, LoopHistogram] = {}
        self.answers: Counter[tuple[str, str, str]] = Counter()  # model, backend, outcome
        self.tokens: Counter[tuple[str, str]] = Counter()  # model, prompt|completion
        self.failures: Counter[tuple[str, str, str]] = Counter()  # model, backend, code
        self.refusals: Counter[tuple[str, str]] = Counter()  # model, reason

    def refused(self, model: str, reason: str) -> None:
        self.refusals[model, reason] += 1

    def first_token(self, model: str, seconds: float) -> None:
        hist = self.ttft.get(model)
        if hist is None:
            hist = self.ttft[model] = LoopHistogram(TTFT_BUCKETS_S)
        hist.observe(seconds)

    def backend_failed(self, model: str, backend: str, code: str) -> None:
        self.failures[model, backend, code] += 1

    def answer_ended(self, model: str, backend: str, answer: ChatAnswer, end: AnswerEnd) -> None:
        self.answers[model, backend, end.reason] += 1
        usage = end.usage
        self.tokens[model, "prompt"] += usage.prompt_tokens
        self.tokens[model, "completion"] += usage.completion_tokens
        if usage.completion_tokens > 1 and end.decode_s > 0:
            hist = self.tpot.get(model)
            if hist is None:
                hist = self.tpot[model] = LoopHistogram(TPOT_BUCKETS_S)
            hist.observe(end.decode_s / (usage.completion_tokens - 1))

    def collect(self) -> Iterator[Metric]:
        for name, help_, hists in (
            ("surge_llm_time_to_first_token_seconds",
             "From sending a chat request to a backend to its first token", self.ttft),
            ("surge_llm_time_per_output_token_seconds",
             "Mean time per output token after the first, per answer", self.tpot),
        ):  # fmt: skip
            family = HistogramMetricFamily(name, help_, labels=["model"])
            for model, hist in hists.items():
                family.add_metric([model], hist.cumulative(), hist.sum)
            yield family
        answers = CounterMetricFamily(
            "surge_llm_answers",
            "Chat answers by how they ended (stop, length, deadline, error, cancelled)",
            labels=["model", "backend", "outcome"],
        )
        for key, n in self.answers.items():
            answers.add_metric(list(key), n)
        yield answers
        tokens = CounterMetricFamily(
            "surge_llm_tokens", "Tokens of chat answers", labels=["model", "kind"]
        )
        for key, n in self.tokens.items():
            tokens.add_metric(list(key), n)
        yield tokens
        failures = CounterMetricFamily(
            "surge_llm_backend_failures",
            "Backend calls that failed before or during an answer (a fallback follows when "
            "it was before the first token)",
            labels=["model", "backend", "code"],
        )
        for key, n in self.failures.items():
            failures.add_metric(list(key), n)
        yield failures
        refusals = CounterMetricFamily(
            "surge_llm_refusals", "Chat requests refused for load", labels=["model", "reason"]
        )
        for key, n in self.refusals.items():
            refusals.add_metric(list(key), n)
        yield refusals
        streams = GaugeMetricFamily(
            "surge_llm_streams_open", "Chat answers in progress", labels=["model"]
        )
        breakers = GaugeMetricFamily(
            "surge_llm_backend_breaker_state",
            "A backend's circuit breaker: 0 closed, 0.5 half-open, 1 open",
            labels=["model", "backend"],
        )
        for name, model in self.models().items():
            streams.add_metric([name], model.open_streams)
            for backend, state in model.breaker_states().items():
                breakers.add_metric([name, backend], BREAKER_VALUE.get(state, 0.0))
        yield streams
        yield breakers
