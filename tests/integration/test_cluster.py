"""Several surge processes on one registry act as one platform: real processes on
loopback ports, the real PostgreSQL and Redis (or SQLite with uvicorn workers), and a
Redis the test starts itself so that it can stop it."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN, free_port, run_server
from rollout_helpers import (
    SteadyLoad,
    admin,
    deploy,
    digit_body,
    digits_config,
    history,
    rollout_repository,
    status,
    wait_for,
)

from surge.repository import link_version

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_SERVER = Path("/usr/bin/redis-server")


@pytest.fixture(scope="module")
def repo(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rollout_repository(demo_models, tmp_path_factory.mktemp("cluster-repo"))


@pytest.fixture
def namespace() -> Iterator[str]:
    """Tables and Redis keys of this test only; PostgreSQL's are dropped after it."""
    name = f"c_{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{name}_%",)
            ).fetchall()
            for (table,) in tables:
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')


def _postgres() -> str:
    psycopg = pytest.importorskip("psycopg")
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return POSTGRES_URL
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")


def _redis() -> str:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


def shared_config(repo: Path, namespace: str, **rollout) -> dict:
    config = digits_config(repo, **rollout)
    config.update(
        registry_url=_postgres(),
        registry_namespace=namespace,
        redis_url=_redis(),
        cluster={"lease_ttl_s": 1.5, "heartbeat_interval_s": 0.5, "process_timeout_s": 2.0},
    )
    return config


def processes(url: str) -> list[dict]:
    r = admin(url, "GET", "/admin/processes")
    assert r.status_code == 200, r.text
    return r.json()["processes"]


def workdir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(exist_ok=True)
    return path


def only_version(version: str):
    return lambda s: [v["version"] for v in s["versions"]] == [version]


def all_serve(urls: list[str], predicate) -> bool:
    return all(predicate(status(url)) for url in urls)


def test_a_change_through_one_process_is_served_by_the_other_and_audited_once(
    repo, tmp_path, namespace
):
    config = shared_config(repo, namespace, steps_percent=[50, 100], min_requests=15,
                           min_step_s=1.0, max_p99_ratio=100.0)  # fmt: skip
    with (
        run_server(config, workdir(tmp_path, "a")) as a,
        run_server(config, workdir(tmp_path, "b")) as b,
        SteadyLoad(a.url, clients=2, max_seconds=90) as load_a,
        SteadyLoad(b.url, clients=2, max_seconds=90) as load_b,
    ):
        wait_for(lambda: len(processes(a.url)) == 2, 10, "both processes' heartbeats")
        r = deploy(a.url, model="digits", version="2", mode="canary", percent=50)
        assert r.status_code == 200, r.text
        revision = r.json()["revision"]
        # B follows A's change: the same revision, the canary among its versions.
        wait_for(
            lambda: (s := status(b.url))["revision"] >= revision and s["mode"] != "single",
            5,
            "process B to serve the canary",
        )
        # The one leader promotes it, on both processes' measurements.
        wait_for(
            lambda: all_serve([a.url, b.url], only_version("2")),
            60,
            "the controller to promote version 2 on both processes",
            interval_s=0.3,
        )
        time.sleep(0.3)  # answers after the promotion, from both
        load_a.stop()
        load_b.stop()
    for load in (load_a, load_b):
        assert set(load.codes) == {200}, (load.codes, load.failures[:3])
        assert load.versions["2"] > 0 and load.versions["1"] > 0
    # One entry per change, not one per process (both started with the same config).
    with run_server(config, workdir(tmp_path, "c")) as c:
        actions = Counter(e["action"] for e in history(c.url))
    assert actions == {"configure": 1, "deploy": 1, "advance": 1, "promote": 1}, actions


def test_when_the_leader_dies_mid_rollout_another_process_finishes_it(repo, tmp_path, namespace):
    config = shared_config(repo, namespace, steps_percent=[5, 50, 100], min_requests=10,
                           min_step_s=1.5, max_p99_ratio=100.0)  # fmt: skip
    with (
        run_server(config, workdir(tmp_path, "a")) as a,
        run_server(config, workdir(tmp_path, "b")) as b,
    ):
        servers = {a.url: a, b.url: b}
        leader_id = wait_for(
            lambda: next((p["id"] for p in processes(a.url) if p["state"].get("leader")), None),
            10,
            "a rollout leader",
        )
        leader_url = next(
            u for u in servers if any(p["this"] and p["id"] == leader_id for p in processes(u))
        )
        survivor = b if leader_url == a.url else a
        with SteadyLoad(survivor.url, clients=2, max_seconds=90) as load:
            r = deploy(survivor.url, model="digits", version="2", mode="canary", percent=5)
            assert r.status_code == 200, r.text
            wait_for(lambda: status(survivor.url)["rollout"] is not None, 5, "the canary")
            servers[leader_url].process.send_signal(signal.SIGKILL)
            servers[leader_url].process.wait(10)
            # The survivor takes the lease and walks the rollout to its end.
            wait_for(
                lambda: [v["version"] for v in status(survivor.url)["versions"]] == ["2"],
                60,
                "the survivor to finish the rollout",
                interval_s=0.3,
            )
            load.stop()
        assert set(load.codes) == {200}, (load.codes, load.failures[:3])
        survivors = processes(survivor.url)
        assert [p["this"] for p in survivors] == [True] or all(
            p["heartbeat_age_s"] < 3 for p in survivors if p["this"]
        )
        assert any(p["this"] and p["state"]["leader"] for p in survivors)
        entries = history(survivor.url)
        decided = [e["action"] for e in reversed(entries) if e["actor"] == "controller"]
        assert decided == ["advance", "advance", "promote"], decided


BANDIT_ARM = """

class Model:
    def predict(self, batch):
        n = len(batch["input"])
        return {"probabilities": np.full((n, 10), 0.1, dtype=np.float32),
                "label": np.zeros(n, dtype=np.int64)}
"""


def _reachable_workers(url: str, want: int) -> None:
    wait_for(lambda: len(processes(url)) == want, 30, f"{want} workers' heartbeats")


def test_two_workers_on_one_host_act_as_one(repo, tmp_path):
    config = digits_config(repo, steps_percent=[50, 100], min_requests=5000, min_step_s=3600)
    config["server"]["workers"] = 2
    config["cluster"] = {"heartbeat_interval_s": 0.3, "process_timeout_s": 3.0}
    config["endpoints"]["other"] = {**config["endpoints"]["digits"], "model": "digits"}
    config["routes"] = {"learner": {"bandit": {"arms": ["digits", "other"], "sync_s": 0.5}}}
    sent = 0
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        _reachable_workers(server.url, 2)

        def every_worker(check) -> bool:
            return all(check(p) for p in processes(server.url))

        def everywhere(revision: int) -> bool:
            return every_worker(lambda p: p["state"]["routes"].get("digits") == revision)

        # deploy, promote, deploy again, roll back: each reaches both workers
        steps = (
            (lambda: deploy(server.url, model="digits", version="2", mode="canary", percent=50),
             {"1", "2"}),
            (lambda: admin(server.url, "POST", "/admin/endpoints/digits/promote"), {"2"}),
            (lambda: deploy(server.url, model="digits", version="1", mode="canary", percent=50),
             {"1", "2"}),
            (lambda: admin(server.url, "POST", "/admin/endpoints/digits/rollback"), {"2"}),
        )  # fmt: skip
        for step, serving in steps:
            r = step()
            assert r.status_code == 200, r.text
            wait_for(lambda r=r: everywhere(r.json()["revision"]), 10, "both workers on it")
            for _ in range(10):  # whichever worker answers, it serves the change
                answer = client.post("/v2/models/digits/infer", json=digit_body(sent))
                sent += 1
                assert answer.status_code == 200
                assert answer.headers["x-model-version"] in serving
        # a forced mode reaches both workers, and so does its release
        forced = admin(server.url, "POST", "/admin/mode", json={"mode": "emergency"})
        assert forced.status_code == 200, forced.text
        wait_for(
            lambda: every_worker(
                lambda p: p["state"]["mode"] == "emergency" and p["state"]["forced"]
            ),
            10,
            "the forced mode on both workers",
        )
        released = admin(server.url, "DELETE", "/admin/mode")
        assert released.status_code == 200
        # released everywhere: each worker's own signals decide its mode again
        wait_for(lambda: every_worker(lambda p: not p["state"]["forced"]), 10, "release")
        # feedback for answers of either worker, through either worker, exactly once
        # (each worker signs with the namespace's one feedback secret)
        proofs = []
        for i in range(40):
            answer = client.post("/v2/models/learner/infer", json=digit_body(i))
            sent += 1
            assert answer.status_code == 200
            proofs.append({"request_id": answer.headers["x-request-id"],
                           "feedback_token": answer.headers["x-feedback-token"]})  # fmt: skip
        for proof in proofs:
            fed = client.post("/v1/feedback", json={**proof, "reward": 1.0})
            assert fed.status_code == 200, fed.text
        again = client.post("/v1/feedback", json={**proofs[0], "reward": 1.0})
        assert again.status_code == 404
    # every receipt of both workers is stored, none lost (the server has stopped and
    # its sinks flushed)
    with sqlite3.connect(tmp_path / "registry.db") as db:
        (stored,) = db.execute("SELECT COUNT(*) FROM surge_receipts").fetchone()
        audit = Counter(a for (a,) in db.execute("SELECT action FROM surge_audit"))
    assert stored == sent
    assert (audit["deploy"], audit["promote"], audit["rollback"]) == (2, 1, 1), audit
    assert audit["configure"] == 2  # digits and other, once each though two workers started


@contextlib.contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(
        [
            str(REDIS_SERVER),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        redis = pytest.importorskip("redis")
        wait_for(lambda: _pings(redis, port), 10, "redis-server to start")
        yield process
    finally:
        process.terminate()
        process.wait(10)


def _pings(redis, port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _link_up(url: str, link: str) -> float | None:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f'surge_control_plane_up{{link="{link}"}}'):
            return float(line.split()[-1])
    return None


@pytest.mark.skipif(not REDIS_SERVER.exists(), reason="no /usr/bin/redis-server to start")
def test_redis_down_answers_continue_changes_wait_and_recover(repo, tmp_path):
    port = free_port()
    config = digits_config(repo)
    config["redis_url"] = f"redis://127.0.0.1:{port}/0"
    with private_redis(port) as redis_server, run_server(config, tmp_path) as server:
        wait_for(lambda: _link_up(server.url, "redis") == 1.0, 10, "redis link up")
        with SteadyLoad(server.url, clients=2, max_seconds=60) as load:
            redis_server.terminate()
            redis_server.wait(10)
            wait_for(lambda: _link_up(server.url, "redis") == 0.0, 10, "redis link down")
            refused = deploy(server.url, model="digits", version="2", mode="canary")
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "control_plane_unavailable"
            assert "retry-after" in refused.headers
            mode = admin(server.url, "POST", "/admin/mode", json={"mode": "surge"})
            assert mode.status_code == 503
            answered = load.total
            wait_for(lambda: load.total > answered + 20, 10, "answers while redis is down")
            with private_redis(port):
                wait_for(lambda: _link_up(server.url, "redis") == 1.0, 10, "redis link back")
                r = deploy(server.url, model="digits", version="2", mode="canary", percent=5)
                assert r.status_code == 200, r.text
            load.stop()
        assert set(load.codes) == {200}, (load.codes, load.failures[:3])
        assert "unreachable" in server.log()


def test_a_process_that_cannot_load_the_candidate_rolls_the_canary_back(repo, tmp_path):
    # Two processes on one SQLite registry, one of which lacks version 2 on its disk:
    # the canary deployed through the other must not go on serving half the fleet.
    partial = tmp_path / "partial-repo"
    (partial / "digits").mkdir(parents=True)
    link_version(repo / "digits" / "1", partial / "digits" / "1")
    registry = f"sqlite:///{tmp_path / 'shared.db'}"
    config = digits_config(repo, steps_percent=[5, 100], min_requests=5, min_step_s=1.0)
    config.update(
        registry_url=registry, cluster={"heartbeat_interval_s": 0.3, "process_timeout_s": 3.0}
    )
    lacking = {**config, "model_repository": str(partial)}
    with (
        run_server(config, workdir(tmp_path, "a")) as a,
        run_server(lacking, workdir(tmp_path, "b")) as b,
    ):
        wait_for(lambda: len(processes(a.url)) == 2, 10, "both heartbeats")
        r = deploy(a.url, model="digits", version="2", mode="canary", percent=5)
        assert r.status_code == 200, r.text
        rolled = wait_for(
            lambda: next((e for e in history(a.url) if e["action"] == "rollback"), None),
            20,
            "the rollback",
        )
        assert "could not load" in rolled["reason"], rolled
        wait_for(lambda: all_serve([a.url, b.url], lambda s: s["mode"] == "single"), 10, "single")
        body = digit_body(0)
        for url in (a.url, b.url):
            answer = httpx.post(f"{url}/v2/models/digits/infer", json=body, headers=ADMIN)
            assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
