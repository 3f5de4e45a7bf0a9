"""How fast a change reaches every process: three surge processes on one PostgreSQL
registry, with Redis notifications and with polling alone.

    python -m benchmarks.control_plane            # 20 changes of each kind per setup

For each change: the time from sending the admin call to process A until every
process (A, B, C) serves it, read by polling each process's own admin API every
5 ms. Two kinds: a route change (an A/B deploy of digits 2, which every follower
loads and warms before switching, then a rollback) and a forced mode (force/release,
nothing to load). Writes benchmarks/results/control_plane.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.servers import REPO_ROOT, surge_server

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = "bench-admin-key"
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
RESULTS = REPO_ROOT / "benchmarks" / "results"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# One client per process watched, made once: making an httpx.Client costs tens of ms
# (its TLS context), which a client per change would add to every figure.
_CLIENTS: dict[str, httpx.Client] = {}


def _client(url: str) -> httpx.Client:
    if url not in _CLIENTS:
        _CLIENTS[url] = httpx.Client(headers=HEADERS, timeout=5)
    return _CLIENTS[url]


def _wait_all(urls: list[str], seen, timeout_s: float = 30.0) -> float:
    """Seconds until `seen(client, url)` holds for every url (polled every 5 ms each)."""
    started = time.perf_counter()
    done: dict[str, float] = {}
    clients = {url: _client(url) for url in urls}

    def watch(url: str) -> None:
        client = clients[url]
        while time.perf_counter() - started < timeout_s:
            if seen(client, url):
                done[url] = time.perf_counter()
                return
            time.sleep(0.005)

    threads = [threading.Thread(target=watch, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(done) < len(urls):
        raise RuntimeError(f"not every process followed within {timeout_s} s")
    return max(done.values())


def _route_change(urls: list[str], body: dict[str, Any] | None) -> float:
    started = time.perf_counter()
    path = "/admin/endpoints/digits/" + ("deploy" if body else "rollback")
    answer = httpx.post(urls[0] + path, json=body or {}, headers=HEADERS, timeout=60)
    answer.raise_for_status()
    revision = answer.json()["revision"]

    def seen(client: httpx.Client, url: str) -> bool:
        return client.get(f"{url}/admin/endpoints/digits").json()["revision"] >= revision

    return _wait_all(urls, seen) - started


def _mode_change(urls: list[str], force: bool) -> float:
    started = time.perf_counter()
    if force:
        answer = httpx.post(urls[0] + "/admin/mode", json={"mode": "surge"}, headers=HEADERS)
    else:
        answer = httpx.request("DELETE", urls[0] + "/admin/mode", headers=HEADERS)
    answer.raise_for_status()

    def seen(client: httpx.Client, url: str) -> bool:
        return client.get(f"{url}/admin/mode").json()["forced"] is force

    return _wait_all(urls, seen) - started


def run_setup(redis: bool, changes: int, workdir: Path) -> dict[str, Any]:
    namespace = f"bench_{uuid.uuid4().hex[:8]}"
    extra = {
        "registry_url": POSTGRES_URL,
        "registry_namespace": namespace,
        "admin": {"keys": [{"name": "bench", "sha256": _sha(ADMIN_KEY)}]},
        "modes": {"enabled": False},
        **({"redis_url": REDIS_URL} if redis else {}),
    }
    endpoints = {"digits": {"warmup_batches": 1}}
    repository = REPO_ROOT / ".surge" / "models"
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(surge_server(f"cp{i}", endpoints, repository, workdir, extra=extra))
            for i in range(3)
        ]
        urls = [s.url for s in servers]
        route, mode = [], []
        for i in range(changes):
            body = {"model": "digits", "version": "2", "mode": "ab", "percent": 50}
            route.append(_route_change(urls, body if i % 2 == 0 else None))
            mode.append(_mode_change(urls, force=i % 2 == 0))
    _drop(namespace)
    return {"route": _summary(route), "mode": _summary(mode)}


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "changes": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def _sha(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def _drop(namespace: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for (table,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{namespace}_%",)
        ).fetchall():
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, redis in (("redis", True), ("polling", False)):
            results[name] = run_setup(redis, args.changes, Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "control_plane.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Control plane: admin call to every process serving the change",
        "",
        f"3 processes on one PostgreSQL registry, {args.changes} changes of each kind "
        "(`python -m benchmarks.control_plane`). Route: an A/B deploy of digits 2 "
        "(each follower loads and warms it before switching) alternating with a "
        "rollback. Mode: a forced mode alternating with its release.",
        "",
        "| setup | change | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for name, figures in results.items():
        for kind in ("route", "mode"):
            f = figures[kind]
            lines.append(f"| {name} | {kind} | {f['p50_ms']} | {f['p99_ms']} | {f['max_ms']} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "control_plane.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
