"""An endpoint's response cache on the request path, with a counting model in place of a
deployment: per-row reuse, versions never sharing answers, tenant scope, TTL, coalescing
and deadlines (memory only; Redis is tested over HTTP)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from surge.config_cache import CacheConfig
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.serving.latency import BatchLatencyModel
from surge.serving.response_cache import EndpointCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def deployment(version: str = "1", checksum: str = "a" * 64) -> SimpleNamespace:
    manifest = SimpleNamespace(model_dump=lambda mode: {"checksums": {"m.onnx": checksum}})
    spec = SimpleNamespace(
        version=SimpleNamespace(model="embed", version=version, manifest=manifest),
        settings=SimpleNamespace(quantization="none"),
    )
    return SimpleNamespace(spec=spec, latency=BatchLatencyModel())


class Model:
    """Doubles each row's number; counts the rows and runs it was asked for."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.runs = 0
        self.rows = 0
        self.delay_s = delay_s

    async def __call__(self, tensors, rows):  # type: ignore[no-untyped-def]
        self.runs += 1
        self.rows += rows
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        texts = tensors["text"]
        return {"value": np.array([float(len(t)) * 2 for t in texts], dtype=np.float32)}


def ctx(clock: Clock, tenant: str | None = None, timeout_s: float = 5.0) -> RequestContext:
    c = RequestContext("r", "embed", clock.now + timeout_s, clock.now)
    c.tenant = tenant
    return c


def texts(*items: str) -> dict[str, np.ndarray]:
    return {"text": np.array([t.encode() for t in items], dtype=object)}


def ask(cache, dep, model, clock, items, tenant=None):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        c = ctx(clock, tenant)
        out = await cache.run(dep, c, texts(*items), len(items), None, model)
        return out, c

    return asyncio.run(go())


def make(clock: Clock, **cfg: object) -> EndpointCache:
    return EndpointCache("embed", CacheConfig(**cfg), None, clock=clock)  # type: ignore[arg-type]


def test_a_repeat_is_served_from_the_cache_and_the_receipt_says_so() -> None:
    clock, model, dep = Clock(), Model(), deployment()
    cache = make(clock)
    first, c1 = ask(cache, dep, model, clock, ["a", "bb"])
    again, c2 = ask(cache, dep, model, clock, ["a", "bb"])
    assert model.runs == 1 and np.array_equal(first["value"], again["value"])
    assert c1.cache["result"] == "miss" and not c1.cache_hit
    assert c2.cache["result"] == "hit" and c2.cache_hit and c2.cache["hit_rows"] == 2


def test_only_the_rows_not_seen_reach_the_model_and_the_answer_is_unchanged() -> None:
    clock, model, dep = Clock(), Model(), deployment()
    cache = make(clock)
    seen = [f"text {i}" * (i % 5 + 1) for i in range(30)]
    ask(cache, dep, model, clock, seen)
    batch = [*seen[:15], "new one", "another new", *seen[15:]]
    out, c = ask(cache, dep, model, clock, batch)
    assert model.rows == 30 + 2
    assert c.cache["hit_rows"] == 30 and c.cache["result"] == "miss"
    expected = asyncio.run(Model()(texts(*batch), len(batch)))
    assert np.array_equal(out["value"], expected["value"])


def test_a_new_version_never_serves_the_old_versions_answers() -> None:
    clock, model = Clock(), Model()
    cache = make(clock)
    ask(cache, deployment("1"), model, clock, ["x"])
    ask(cache, deployment("2"), model, clock, ["x"])
    ask(cache, deployment("1", checksum="b" * 64), model, clock, ["x"])  # same name, new files
    assert model.runs == 3
    ask(cache, deployment("2"), model, clock, ["x"])
    assert model.runs == 3


def test_tenant_scope_never_crosses_tenants_and_shared_scope_does() -> None:
    clock, dep = Clock(), deployment()
    model = Model()
    scoped = make(clock, scope="tenant")
    ask(scoped, dep, model, clock, ["q"], tenant="acme")
    ask(scoped, dep, model, clock, ["q"], tenant="globex")
    assert model.runs == 2
    ask(scoped, dep, model, clock, ["q"], tenant="acme")
    assert model.runs == 2
    shared_model = Model()
    shared = make(clock)
    ask(shared, dep, shared_model, clock, ["q"], tenant="acme")
    ask(shared, dep, shared_model, clock, ["q"], tenant="globex")
    assert shared_model.runs == 1


def test_an_answer_expires_after_its_ttl() -> None:
    clock, model, dep = Clock(), Model(), deployment()
    cache = make(clock, ttl_s=10)
    ask(cache, dep, model, clock, ["t"])
    clock.now += 9.9
    ask(cache, dep, model, clock, ["t"])
    assert model.runs == 1
    clock.now += 0.2
    ask(cache, dep, model, clock, ["t"])
    assert model.runs == 2


def test_stale_answers_are_served_only_while_allowed() -> None:
    clock, model, dep = Clock(), Model(), deployment()
    allowed = {"s": 0.0}
    cache = EndpointCache("embed", CacheConfig(ttl_s=10), None, lambda: allowed["s"], clock)
    ask(cache, dep, model, clock, ["s"])
    clock.now += 15
    allowed["s"] = 60.0  # emergency mode
    _, c = ask(cache, dep, model, clock, ["s"])
    assert model.runs == 1 and c.cache["result"] == "stale" and c.cache["stale"]
    allowed["s"] = 0.0
    ask(cache, dep, model, clock, ["s"])
    assert model.runs == 2


def test_identical_requests_in_flight_are_computed_once() -> None:
    clock, model, dep = Clock(), Model(delay_s=0.05), deployment()
    cache = make(clock)

    async def burst():  # type: ignore[no-untyped-def]
        contexts = [ctx(clock) for _ in range(100)]
        outs = await asyncio.gather(
            *(cache.run(dep, c, texts("same"), 1, None, model) for c in contexts)
        )
        return outs, contexts

    outs, contexts = asyncio.run(burst())
    assert model.runs == 1
    assert all(np.array_equal(o["value"], outs[0]["value"]) for o in outs)
    assert sum(c.cache["coalesced"] for c in contexts) == 99
    assert cache.results["coalesced"] == 99


def test_a_coalesced_request_keeps_its_own_deadline() -> None:
    clock, model, dep = Clock(), Model(delay_s=0.3), deployment()
    cache = make(clock)

    async def two():  # type: ignore[no-untyped-def]
        patient = asyncio.ensure_future(cache.run(dep, ctx(clock), texts("z"), 1, None, model))
        await asyncio.sleep(0.01)
        hurried = ctx(clock, timeout_s=0.05)
        with pytest.raises(SurgeError) as err:
            await cache.run(dep, hurried, texts("z"), 1, None, model)
        return await patient, err.value

    out, refused = asyncio.run(two())
    assert refused.status == 504 and out["value"][0] == 2.0 and model.runs == 1


def test_purge_forgets_the_endpoints_answers() -> None:
    clock, model, dep = Clock(), Model(), deployment()
    cache = make(clock)
    ask(cache, dep, model, clock, ["p"])
    result = asyncio.run(cache.purge())
    assert result["memory_entries"] == 1
    ask(cache, dep, model, clock, ["p"])
    assert model.runs == 2


def test_a_request_whose_lookup_outlasts_an_identical_computation_reuses_its_answer() -> None:
    """With Redis the lookup is a network wait: an identical request can compute and
    finish inside it. The late one must take that answer, not run the model again."""
    clock, model, dep = Clock(), Model(), deployment()
    cache = make(clock)
    cache.redis = SimpleNamespace(healthy=False)  # looked up over the network: it may wait
    looked_up = cache._look_up
    slow = {"calls": 0}

    async def lookup_then_wait(c, keys):  # type: ignore[no-untyped-def]
        found = await looked_up(c, keys)
        slow["calls"] += 1
        if slow["calls"] == 1:  # the late request: its answer from Redis comes back late
            await asyncio.sleep(0.05)
        return found

    cache._look_up = lookup_then_wait  # type: ignore[method-assign]

    async def two():  # type: ignore[no-untyped-def]
        first, second = ctx(clock), ctx(clock)
        late = asyncio.ensure_future(cache.run(dep, second, texts("q"), 1, None, model))
        await asyncio.sleep(0)
        await cache.run(dep, first, texts("q"), 1, None, model)
        return await late, second

    out, second = asyncio.run(two())
    assert model.runs == 1 and out["value"][0] == 2.0
    assert second.cache["result"] == "coalesced"
