"""The response cache over real HTTP, with the demo's embed model and a private
redis-server: reuse per row, coalescing in one process and across two, purge, and
serving on uncached when Redis dies mid-load."""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.fake_llm import FakeLLM
from tests.integration.conftest import ADMIN, Server, run_server
from tests.redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(
    not os.path.exists(REDIS_SERVER), reason=f"{REDIS_SERVER} is not installed"
)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


def cache_config(demo_models: Path, redis: RedisServer) -> dict:
    embed = {
        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2},
        "max_queue": 512,
        "timeout_ms": 15000,  # generous: other tests may load the machine
    }
    return {
        "model_repository": str(demo_models),
        "redis_url": redis.url(),
        # The tests count model runs: a burst mode cutting deadlines under a loaded test
        # machine would turn waits into 504s that say nothing about the cache.
        "modes": {"enabled": False},
        "endpoints": {
            # A generous Redis timeout: a loaded test machine must not turn reads into misses.
            "embed": {
                **embed,
                "cache": {"ttl_s": 300, "max_bytes": 8 << 20, "redis_timeout_ms": 250},
            },
            "embed_plain": {**embed, "model": "embed"},  # the same model, uncached
            "digits": {"cache": {"ttl_s": 300, "scope": "tenant"}, "timeout_ms": 15000},
        },
        "routes": {"digits_in_time": {"ladder": {"rungs": ["digits"]}}},
    }


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture(scope="module")
def servers(
    demo_models: Path, redis: RedisServer, llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Two processes sharing one Redis and one registry (a purge reaches both through it)."""
    shared = tmp_path_factory.mktemp("cache-registry") / "registry.db"
    semantic = {"embedding_endpoint": "embed", "threshold": 0.85}
    chat = {"backends": [{"provider": "fake", "model": "m"}], "cache": {"semantic": semantic}}
    config = {
        **cache_config(demo_models, redis),
        "registry_url": f"sqlite:///{shared}",
        "llm": {"providers": {"fake": {"url": llm.url}}, "models": {"faq": chat}},
    }
    with (
        run_server(config, tmp_path_factory.mktemp("cache-a")) as a,
        run_server(config, tmp_path_factory.mktemp("cache-b")) as b,
    ):
        yield a, b


def embed(
    server: Server, items: list[str], endpoint: str = "embed", **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": endpoint, "input": items},
        headers={"X-Surge-Receipt": "1", **headers},
        timeout=30,
    )


def cache_of(answer: httpx.Response) -> dict:
    return orjson.loads(answer.headers["X-Surge-Receipt"])["cache"]


def rows_computed(server: Server, endpoint: str = "embed") -> tuple[float, float]:
    """(batches run, rows computed) by the endpoint's model, from /metrics."""
    text = httpx.get(f"{server.url}/metrics").text

    def value(name: str) -> float:
        found = re.search(rf'^{name}{{endpoint="{endpoint}"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("surge_batch_size_rows_count"), value("surge_batch_size_rows_sum")


def vectors(answer: httpx.Response) -> np.ndarray:
    return np.array([d["embedding"] for d in answer.json()["data"]], dtype=np.float32)


def test_hit_after_miss_and_per_row_reuse_with_the_same_answer(servers) -> None:
    a, _ = servers
    texts = [f"cache test sentence number {i}" for i in range(32)]
    first = embed(a, texts[:30])
    assert first.status_code == 200 and cache_of(first)["result"] == "miss"
    _, rows_before = rows_computed(a)
    mixed = embed(a, texts)  # 30 seen, 2 new
    _, rows_after = rows_computed(a)
    assert rows_after - rows_before == 2  # only the two new rows reached the model
    assert cache_of(mixed)["hit_rows"] == 30
    plain = embed(a, texts, endpoint="embed_plain")
    assert np.allclose(vectors(mixed), vectors(plain), atol=1e-5)
    again = embed(a, texts)
    assert cache_of(again)["result"] == "hit" and cache_of(again)["hit_rows"] == 32
    assert cache_of(again)["saved_compute_s"] > 0
    deadline = time.monotonic() + 5  # receipts are written in the background
    while True:
        saved = httpx.get(f"{a.url}/admin/costs", headers=ADMIN).json()["cache_saved"]
        embed_saved = [s for s in saved if s["endpoint"] == "embed"]
        if embed_saved and embed_saved[0]["requests_reused"] >= 1:
            break
        assert time.monotonic() < deadline, saved
        time.sleep(0.1)
    assert embed_saved[0]["compute_s"] > 0


def test_the_other_process_reuses_answers_through_redis(servers) -> None:
    a, b = servers
    texts = ["shared across processes", "a second shared text"]
    assert cache_of(embed(a, texts))["result"] == "miss"
    time.sleep(0.2)  # the Redis write is in the background
    _, before = rows_computed(b)
    assert cache_of(embed(b, texts))["result"] == "hit"
    assert rows_computed(b)[1] == before


def test_100_identical_concurrent_requests_run_the_model_once(servers) -> None:
    a, _ = servers
    runs_before, _ = rows_computed(a)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: embed(a, ["one spike text, all at once"]), range(100)))
    assert all(r.status_code == 200 for r in answers)
    runs_after, _ = rows_computed(a)
    assert runs_after - runs_before == 1
    results = [cache_of(r)["result"] for r in answers]
    assert results.count("miss") == 1 and set(results) <= {"miss", "coalesced", "hit"}


def test_across_two_processes_identical_requests_run_at_most_twice(servers) -> None:
    a, b = servers
    before = rows_computed(a)[0] + rows_computed(b)[0]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(
            pool.map(lambda i: embed((a, b)[i % 2], ["two processes, one spike"]), range(100))
        )
    assert all(r.status_code == 200 for r in answers)
    after = rows_computed(a)[0] + rows_computed(b)[0]
    assert after - before <= 2


def test_tenant_scope_keeps_tenants_apart(servers) -> None:
    a, _ = servers
    body = orjson.loads(Path("examples/requests/digit-0.json").read_bytes())

    def ask(tenant: str) -> dict:
        answer = httpx.post(f"{a.url}/v2/models/digits/infer", json=body,
                            headers={"X-Tenant": tenant, "X-Surge-Receipt": "1"})  # fmt: skip
        assert answer.status_code == 200
        return cache_of(answer)

    assert ask("acme")["result"] == "miss"
    assert ask("globex")["result"] == "miss"  # another tenant never sees acme's entry
    assert ask("acme")["result"] == "hit"


def test_purge_reaches_redis_and_every_process(servers) -> None:
    a, b = servers
    texts = ["purge me please"]
    embed(a, texts)
    assert cache_of(embed(a, texts))["result"] == "hit"  # a holds it (and the stats say so)
    time.sleep(0.2)
    assert cache_of(embed(b, texts))["result"] == "hit"  # b holds it in memory now
    purged = httpx.post(f"{a.url}/admin/cache/embed/purge", headers=ADMIN)
    assert purged.status_code == 200 and purged.json()["redis"]["deleted"] >= 1
    deadline = time.monotonic() + 5  # b follows the registry (it polls every 0.5 s)
    while (seen := cache_of(embed(b, texts))["result"]) == "hit":  # from b's own memory
        assert time.monotonic() < deadline, "b still serves what was purged"
        time.sleep(0.2)
    assert seen == "miss"  # Redis was emptied too: b computed it again
    stats = httpx.get(f"{a.url}/admin/cache", headers=ADMIN).json()["endpoints"]["embed"]
    assert stats["requests"]["hit"] >= 1
    metrics = httpx.get(f"{a.url}/metrics").text
    assert 'surge_cache_requests_total{endpoint="embed",result="hit"}' in metrics


def test_redis_stopped_mid_load_fails_no_request(
    demo_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    private = RedisServer()
    private.start()
    config = cache_config(demo_models, private)
    try:
        with run_server(config, tmp_path_factory.mktemp("cache-down")) as server:
            statuses: list[int] = []

            def load(i: int) -> None:
                statuses.append(embed(server, [f"load text {i % 150}", f"fresh {i}"]).status_code)

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(load, range(150)))
                written = re.search(
                    r'^surge_cache_redis_writes_total\{endpoint="embed",result="written"\} (\S+)$',
                    httpx.get(f"{server.url}/metrics").text, re.M,
                )  # fmt: skip
                assert written is not None and float(written.group(1)) >= 1  # Redis had rows
                private.kill()
                list(pool.map(load, range(150, 400)))
            assert statuses.count(200) == 400
            up = httpx.get(f"{server.url}/metrics").text
            assert 'surge_cache_redis_up{endpoint="embed"} 0.0' in up
    finally:
        private.kill()


def test_the_ladder_serves_a_cached_answer_when_no_rung_fits(servers) -> None:
    a, _ = servers
    body = orjson.loads(Path("examples/requests/digit-0.json").read_bytes())
    url = f"{a.url}/v2/models/digits_in_time/infer"
    first = httpx.post(url, json=body, headers={"X-Surge-Receipt": "1"})
    assert first.status_code == 200
    # 0.05 ms: no model fits; the answer computed a moment ago does
    late = httpx.post(url, json=body, headers={"X-Request-Timeout-Ms": "0.05",
                                               "X-Surge-Receipt": "1"})  # fmt: skip
    assert late.status_code == 200, late.text
    assert "degraded" in late.headers["X-Surge-Route"]
    receipt = orjson.loads(late.headers["X-Surge-Receipt"])
    assert receipt["cache"]["result"] == "stale" and receipt["degraded"]
    assert late.json()["outputs"] == first.json()["outputs"]


def test_a_similar_prompt_gets_the_semantic_caches_answer(servers, llm: FakeLLM) -> None:
    a, _ = servers

    def ask(text: str) -> httpx.Response:
        body = {"model": "faq", "temperature": 0,
                "messages": [{"role": "user", "content": text}]}  # fmt: skip
        answer = httpx.post(f"{a.url}/v1/chat/completions", json=body,
                            headers={"X-Surge-Receipt": "1"}, timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.text
        return answer

    before = llm.requests
    first = ask("What is the capital of France?")
    assert cache_of(first)["result"] == "miss"
    similar = ask("what is the capital city of France")
    assert llm.requests - before == 1
    found = cache_of(similar)
    assert found["result"] == "similar" and 0.85 <= found["cosine"] < 1.0
    assert similar.headers["X-Surge-Route"] == "faq@cache"
    assert (
        similar.json()["choices"][0]["message"]["content"]
        == (first.json()["choices"][0]["message"]["content"])
    )
    other = ask("How long should bread dough rise?")
    assert cache_of(other)["result"] == "miss" and llm.requests - before == 2
