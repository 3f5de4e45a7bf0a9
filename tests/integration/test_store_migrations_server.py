"""A server started on a registry the release before schema versions made migrates it,
keeps what it held, and serves."""

from __future__ import annotations

from pathlib import Path

import httpx
from conftest import run_server

from surge.demo.build import build_noop
from surge.store.schema import MIGRATIONS
from tests.unit.test_store_migrations import (
    OLD_ROUTE,
    Database,
    create_previous_release_database,
)


def test_a_server_on_a_registry_from_before_schema_versions_migrates_it_and_serves(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "models"
    (repo / "noop" / "1").mkdir(parents=True)
    build_noop(repo / "noop" / "1", width=4)
    db = Database("sqlite", f"sqlite:///{tmp_path / 'registry.db'}", "surge")
    create_previous_release_database(db)
    config = {"model_repository": str(repo), "endpoints": {"noop": {"warmup_batches": 1}}}

    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                            "data": [1.0, 2.0, 3.0, 4.0]}]}  # fmt: skip
        answer = client.post("/v2/models/noop/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
        assert server.terminate() == 0

    assert db.schema_versions() == [m.version for m in MIGRATIONS]
    store = db.open()
    try:
        assert store.load_route("digits") == OLD_ROUTE  # the old release's route, kept
        assert [(v.model, v.version) for v in store.list_versions()][:1] == [("digits", "1")]
        assert store.route_revisions()["noop"] >= 1  # the server wrote its route since
    finally:
        store.close()
