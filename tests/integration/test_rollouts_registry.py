"""The registry over real HTTP: a server killed mid-rollout resumes at the same step
(SQLite and the real PostgreSQL), and a version rebuilt under a registered number
refuses to load."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from conftest import run_server
from rollout_helpers import (
    SteadyLoad,
    admin,
    deploy,
    digits_config,
    history,
    rollout_repository,
    status,
    wait_for,
)

from surge.repository import write_manifest

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="module")
def repo(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rollout_repository(demo_models, tmp_path_factory.mktemp("registry-repo"))


def _postgres_registry() -> str:
    psycopg = pytest.importorskip("psycopg")
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute(
                "DROP TABLE IF EXISTS surge_audit, surge_routes, surge_versions, surge_reviews"
            )
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    return POSTGRES_URL


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_server_killed_mid_rollout_resumes_at_the_same_step(backend, repo, tmp_path):
    config = digits_config(repo, steps_percent=[5, 25, 100], min_step_s=3600)
    config["registry_url"] = (
        _postgres_registry() if backend == "postgresql" else f"sqlite:///{tmp_path / 'r.db'}"
    )
    with run_server(config, tmp_path) as server:
        r = deploy(server.url, version="2", mode="canary", percent=25)
        assert r.status_code == 200, r.text
        assert r.json()["rollout"]["step"] == 1
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    with run_server(config, tmp_path) as server:
        resumed = status(server.url)
        assert resumed["mode"] == "canary"
        assert resumed["rollout"]["step"] == 1 and resumed["rollout"]["percent"] == 25
        shares = {v["version"]: v["traffic_percent"] for v in resumed["versions"]}
        assert shares == {"1": 75.0, "2": 25.0}
        with SteadyLoad(server.url, max_requests=200) as load:
            wait_for(lambda: load.total >= 200, 60, "200 answers")
        assert load.codes == {200: 200} and load.versions["2"] > 0, load.codes
        actions = [e["action"] for e in history(server.url)]
        assert "deploy" in actions


def test_a_rebuilt_version_under_a_registered_number_refuses_to_load(repo, tmp_path):
    own = tmp_path / "repo"
    (own / "digits").mkdir(parents=True)
    shutil.copytree(repo / "digits" / "1", own / "digits" / "1")
    shutil.copytree(repo / "digits" / "2", own / "digits" / "3")
    with run_server(digits_config(own), tmp_path) as server:
        ok = deploy(server.url, version="3", mode="canary", percent=5)
        assert ok.status_code == 200, ok.text
        assert admin(server.url, "POST", "/admin/endpoints/digits/rollback").status_code == 200
        # Someone rebuilds version 3 in place with other weights (and a fresh model.yaml).
        shutil.copy(own / "digits" / "1" / "model.joblib", own / "digits" / "3" / "model.joblib")
        manifest = (own / "digits" / "1" / "model.yaml").read_text()
        import yaml

        doc = yaml.safe_load(manifest)
        doc.pop("checksums")
        write_manifest(own / "digits" / "3", doc)
        refused = deploy(server.url, version="3", mode="canary", percent=5)
        assert refused.status_code == 409, refused.text
        assert "checksum" in refused.json()["error"]["message"]
        assert [v["version"] for v in status(server.url)["versions"]] == ["1"]
