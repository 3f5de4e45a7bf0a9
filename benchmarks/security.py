"""What keys and rate limits cost, and how exact the limits are across processes.

    python -m benchmarks.security                 # about 4 minutes on 2 cores

(1) Hot path: the noop endpoint under wrk (32 connections), three servers side by side,
    measured in alternating rounds so that a noisy neighbour hits all of them alike:
    `off` (the demo's defaults: no auth, no limits), `keys` (auth required, a client key,
    a tenant rate limit counted in this process) and `keys+redis` (the same limit counted
    in Redis, one round trip per request). Reported: best throughput of each, and the
    ratios to `off` (target >= 0.9x).
(2) Accuracy: two processes on one PostgreSQL registry and one Redis, a tenant limit of
    100 requests/s, offered 300/s for 10 s, open loop, alternating between them:
    admitted / (rate x time + burst).
(3) Redis down: the same pair on a private redis-server, killed mid-load, once with
    `limits.on_store_down: open` (each process counts alone) and once with `closed`
    (refused with 503): what each phase admitted.

Writes benchmarks/results/security.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from benchmarks import wrk
from benchmarks.servers import REPO_ROOT, ServerProcess, free_port, measure, surge_server
from benchmarks.settings import NOOP_CONNECTIONS, WRK_CAP_PER_S
from benchmarks.workload import NOOP_BODY

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = "bench-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
RESULTS = REPO_ROOT / "benchmarks" / "results"
PATH = "/v2/models/noop/infer"
ENDPOINTS = {"noop": {"version": "1", "max_queue": 4096}}
LIMIT_RPS = 100


def log(line: str) -> None:
    print(line, flush=True)


def _admin() -> dict[str, Any]:
    return {"admin": {"keys": [{"name": "bench", "sha256": hashlib.sha256(
        ADMIN_KEY.encode()).hexdigest()}]}}  # fmt: skip


def make_key(url: str, tenant: str) -> str:
    made = httpx.post(f"{url}/admin/keys", json={"tenant": tenant, "scopes": ["infer"]},
                      headers=ADMIN, timeout=30)  # fmt: skip
    made.raise_for_status()
    return made.json()["key"]


# -- (1) the hot path ------------------------------------------------------------------


def hot_path(repository: Path, workdir: Path, seconds: float, rounds: int) -> dict[str, Any]:
    namespace = f"bench_{uuid.uuid4().hex[:8]}"
    unlimited = {"tenants": {"bench": {"limits": {"requests_per_s": 1e6}}}}
    setups = {
        "off": {},
        "keys": {**_admin(), "auth": {"required": True}, **unlimited},
        "keys+redis": {
            **_admin(),
            "auth": {"required": True},
            **unlimited,
            "redis_url": REDIS_URL,
            "registry_namespace": namespace,
        },
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[ServerProcess, dict[str, str]]] = {}
        for name, extra in setups.items():
            server = stack.enter_context(
                surge_server(name.replace("+", "_"), ENDPOINTS, repository, workdir, extra=extra)
            )
            headers = {}
            if name != "off":
                headers = {"Authorization": f"Bearer {make_key(server.url, 'bench')}"}
            servers[name] = (server, headers)

        def load(name: str, duration_s: float) -> dict[str, Any]:
            server, headers = servers[name]
            return wrk.run(server.url + PATH, [NOOP_BODY], connections=NOOP_CONNECTIONS,
                           duration_s=duration_s, headers=headers,
                           max_requests=int(WRK_CAP_PER_S * duration_s))  # fmt: skip

        for name in setups:
            load(name, 2)  # warm: connections, the key's hash, the Redis pool
        for _ in range(rounds):
            for name in setups:
                server, _ = servers[name]
                before = redis_cpu_s()
                run = measure(server, lambda n=name: load(n, seconds), log, 20)
                # redis-server shares this machine's 2 cores: what it used, per request.
                run["redis_cpu_us_per_request"] = round(
                    (redis_cpu_s() - before) / max(run["requests"], 1) * 1e6, 1
                )
                runs[name].append(run)
                log(f"{name}: {run['ok_rps']} req/s ok of {run['rps']}, "
                    f"p99 {run['latency_ms']['p99']} ms, "
                    f"{run['server']['cpu_us_per_request']} µs CPU/request")  # fmt: skip
    best = {name: max(rs, key=lambda r: r["ok_rps"]) for name, rs in runs.items()}
    return {
        "runs": runs,
        "best_rps": {name: r["ok_rps"] for name, r in best.items()},
        "cpu_us": {name: r["server"]["cpu_us_per_request"] for name, r in best.items()},
        "p99_ms": {name: r["latency_ms"]["p99"] for name, r in best.items()},
        "redis_cpu_us": {name: r["redis_cpu_us_per_request"] for name, r in best.items()},
        "mean_ratio": {
            name: round(
                sum(r["ok_rps"] for r in runs[name]) / sum(r["ok_rps"] for r in runs["off"]), 3
            )
            for name in setups
        },
        "ratio": {name: round(best[name]["ok_rps"] / best["off"]["ok_rps"], 3) for name in setups},
    }


def redis_cpu_s() -> float:
    """CPU seconds the shared redis-server has used so far."""
    import redis

    info = redis.Redis.from_url(REDIS_URL).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


# -- (2) and (3): two processes ----------------------------------------------------------


@contextlib.contextmanager
def pair(repository: Path, workdir: Path, redis_url: str, on_down: str) -> Iterator[list[str]]:
    namespace = f"bench_{uuid.uuid4().hex[:8]}"
    extra = {
        **_admin(),
        "registry_url": POSTGRES_URL,
        "registry_namespace": namespace,
        "redis_url": redis_url,
        "auth": {"required": True},
        "tenants": {"shared": {"limits": {"requests_per_s": LIMIT_RPS}}},
        "limits": {"on_store_down": on_down},
        "modes": {"enabled": False},
    }
    with (
        surge_server("pair_a", ENDPOINTS, repository, workdir, extra=extra) as a,
        surge_server("pair_b", ENDPOINTS, repository, workdir, extra=extra) as b,
    ):
        yield [a.url, b.url]


async def offer(urls: list[str], key: str, rate: float, seconds: float) -> dict[str, Any]:
    """Open loop: `rate` requests/s for `seconds`, alternating between `urls`."""
    codes: Counter = Counter()
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300)) as session:

        async def one(url: str) -> None:
            try:
                async with session.post(url + PATH, json=json.loads(NOOP_BODY),
                                        headers=headers) as response:  # fmt: skip
                    await response.read()
                    codes[response.status] += 1
            except aiohttp.ClientError:
                codes["error"] += 1

        start = time.monotonic()
        tasks = []
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(urls[i % len(urls)])))
        await asyncio.gather(*tasks)
        span = time.monotonic() - start
    return {"codes": dict(codes), "span_s": round(span, 3)}


def accuracy(repository: Path, workdir: Path, seconds: float) -> dict[str, Any]:
    with pair(repository, workdir, REDIS_URL, "open") as urls:
        key = make_key(urls[0], "shared")
        for url in urls:
            httpx.post(url + PATH, content=NOOP_BODY, headers={"Authorization": f"Bearer {key}"})
        time.sleep(1.5)
        result = asyncio.run(offer(urls, key, 3 * LIMIT_RPS, seconds))
    admitted = result["codes"].get(200, 0)
    expected = LIMIT_RPS * result["span_s"] + 5
    result.update(admitted=admitted, expected=round(expected, 1),
                  ratio=round(admitted / expected, 4))  # fmt: skip
    log(f"accuracy: admitted {admitted} of {expected:.0f} expected ({result['ratio']}x)")
    return result


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def redis_down(repository: Path, workdir: Path, on_down: str, seconds: float) -> dict[str, Any]:
    with private_redis(workdir) as (url, redis), pair(repository, workdir, url, on_down) as urls:
        key = make_key(urls[0], "shared")
        for base in urls:
            httpx.post(base + PATH, content=NOOP_BODY, headers={"Authorization": f"Bearer {key}"})
        time.sleep(1.5)
        up = asyncio.run(offer(urls, key, 3 * LIMIT_RPS, seconds))
        redis.kill()
        redis.wait()
        time.sleep(0.5)
        down = asyncio.run(offer(urls, key, 3 * LIMIT_RPS, seconds))
    for phase, result in (("up", up), ("down", down)):
        log(f"redis {phase} ({on_down}): {result['codes']} in {result['span_s']} s")
    return {"up": up, "down": down}


# -- report -----------------------------------------------------------------------------


def markdown(doc: dict[str, Any]) -> str:
    hot = doc["hot_path"]
    lines = [
        "# Keys and rate limits: cost on the hot path, exactness across processes",
        "",
        f"`python -m benchmarks.security`: noop endpoint, wrk {NOOP_CONNECTIONS} connections, "
        f"best of {doc['rounds']} alternating rounds of {doc['seconds']} s each.",
        "",
        "| setup | req/s (best) | vs off (best) | vs off (mean of rounds) "
        "| server µs CPU/request | redis-server µs CPU/request | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in hot["best_rps"]:
        lines.append(f"| {name} | {hot['best_rps'][name]} | {hot['ratio'][name]}x | "
                     f"{hot['mean_ratio'][name]}x | {hot['cpu_us'][name]} | "
                     f"{hot['redis_cpu_us'][name]} | {hot['p99_ms'][name]} |")  # fmt: skip
    lines += [
        "",
        "redis-server runs on the same 2 cores as the server and wrk here, so its CPU per "
        "request is taken from the server's; on its own host it would not be.",
    ]
    acc = doc["accuracy"]
    lines += [
        "",
        f"Two processes, one Redis, tenant limit {LIMIT_RPS}/s, offered {3 * LIMIT_RPS}/s "
        f"open loop for {acc['span_s']} s: admitted {acc['admitted']}, "
        f"limit x time + burst {acc['expected']} -> **{acc['ratio']}x**.",
        "",
        "Redis killed mid-load (same pair, a private redis-server):",
        "",
        "| on_store_down | phase | admitted (200) | 429 | 503 | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("open", "closed"):
        for phase in ("up", "down"):
            r = doc["redis_down"][mode][phase]
            c = r["codes"]
            lines.append(f"| {mode} | redis {phase} | {c.get('200', c.get(200, 0))} | "
                         f"{c.get('429', c.get(429, 0))} | {c.get('503', c.get(503, 0))} | "
                         f"{r['span_s']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per wrk round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / ".surge" / "models")
    args = parser.parse_args(argv)
    from surge.demo.build import ensure_demo_models

    ensure_demo_models(args.repository)
    with tempfile.TemporaryDirectory(prefix="surge-bench-security-") as tmp:
        workdir = Path(tmp)
        doc = {"seconds": args.seconds, "rounds": args.rounds}
        doc["hot_path"] = hot_path(args.repository, workdir, args.seconds, args.rounds)
        doc["accuracy"] = accuracy(args.repository, workdir, 10.0)
        doc["redis_down"] = {
            mode: redis_down(args.repository, workdir, mode, 5.0) for mode in ("open", "closed")
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "security.json").write_text(json.dumps(doc, indent=2, default=str))
    (RESULTS / "security.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
