"""Client keys over real HTTP, with auth required: the stock clients with and without a
key, scopes per route, the tenant and priority a key decides (and X-Tenant ignored from
keys that are not gateways), a tenant's own receipts, revocation and rotation, `surge
keys` from the CLI, and a registry that never holds a key."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from conftest import ADMIN, ADMIN_KEY, Server, digits_rows, run_server

ROW = digits_rows(1)[0][0].tolist()


def v2_body(rows: int = 1) -> dict:
    return {"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32",
                        "data": ROW * rows}]}  # fmt: skip


@pytest.fixture(scope="module")
def server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory):
    config = {
        "model_repository": str(demo_models),
        "endpoints": {"digits": {}, "embed": {}},
        "auth": {"required": True, "protect_metrics": True},
        "tenants": {"acme": {"priority": 2}, "globex": {}},
        "observability": {"receipts": {"flush_interval_s": 0.05}},
    }
    workdir = tmp_path_factory.mktemp("keys")
    with run_server(config, workdir) as running:
        running.workdir = workdir  # type: ignore[attr-defined]
        yield running


def make_key(server: Server, tenant: str, *scopes: str, **extra) -> dict:
    body = {"tenant": tenant, "scopes": list(scopes), "name": f"test {scopes}", **extra}
    made = httpx.post(f"{server.url}/admin/keys", json=body, headers=ADMIN, timeout=30)
    assert made.status_code == 201, made.text
    return made.json()


def bearer(key: dict) -> dict:
    return {"Authorization": f"Bearer {key['key']}"}


def infer(server: Server, headers: dict, model: str = "digits", **kw) -> httpx.Response:
    url = f"{server.url}/v2/models/{model}/infer"
    return httpx.post(url, json=v2_body(), headers=headers, timeout=30, **kw)


def test_no_key_is_refused_in_each_protocols_shape(server: Server) -> None:
    v2 = infer(server, {})
    assert v2.status_code == 401
    assert isinstance(v2.json()["error"], str) and "key" in v2.json()["error"]
    assert v2.headers["www-authenticate"].startswith("Bearer")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.embeddings.create(model="embed", input="hello")
    assert refused.value.status_code == 401
    assert refused.value.body["code"] == "unauthorized"  # OpenAI's error object
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401
    # Probes need no key.
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200


def test_a_key_with_infer_scope_serves_both_protocols(server: Server) -> None:
    key = make_key(server, "acme", "infer")
    assert key["key"].startswith(f"sgk_{key['id']}_")
    answer = infer(server, bearer(key))
    assert answer.status_code == 200, answer.text
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key["key"], max_retries=0)
    vectors = client.embeddings.create(model="embed", input=["hello", "world"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
    assert [m.id for m in client.models.list().data] == ["digits", "embed"]


def test_scopes_are_enforced_per_route(server: Server) -> None:
    digits_only = make_key(server, "acme", "infer:digits")
    assert infer(server, bearer(digits_only)).status_code == 200
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=digits_only["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model="embed", input="hello")
    feedback_only = make_key(server, "acme", "feedback")
    assert infer(server, bearer(feedback_only)).status_code == 403
    assert httpx.get(f"{server.url}/metrics", headers=bearer(feedback_only)).status_code == 403
    metrics = make_key(server, "acme", "metrics")
    assert httpx.get(f"{server.url}/metrics", headers=bearer(metrics)).status_code == 200
    # A client key reaches the admin API only with the admin scope.
    listed = httpx.get(f"{server.url}/admin/keys", headers=bearer(metrics), timeout=10)
    assert listed.status_code == 403
    admin = make_key(server, "ops", "admin")
    listed = httpx.get(f"{server.url}/admin/keys", headers=bearer(admin), timeout=10)
    assert listed.status_code == 200 and admin["id"] in {k["id"] for k in listed.json()["keys"]}


def receipt_of(answer: httpx.Response) -> dict:
    return json.loads(answer.headers["x-surge-receipt"])


def test_tenant_comes_from_the_key_unless_it_is_a_gateway(server: Server) -> None:
    plain = make_key(server, "acme", "infer")
    claimed = {**bearer(plain), "X-Tenant": "globex", "X-Priority": "9", "x-surge-receipt": "1"}
    answer = infer(server, claimed)
    assert answer.status_code == 200
    assert receipt_of(answer)["tenant"] == "acme"
    gateway = make_key(server, "edge", "infer", "gateway")
    speaking = {**bearer(gateway), "X-Tenant": "globex", "x-surge-receipt": "1"}
    assert receipt_of(infer(server, speaking))["tenant"] == "globex"
    hostile = {**bearer(gateway), "X-Tenant": "../../etc"}
    assert infer(server, hostile).status_code == 400


def test_a_tenant_reads_only_its_own_receipts(server: Server) -> None:
    acme = make_key(server, "acme", "infer", "receipts:read")
    globex = make_key(server, "globex", "infer", "receipts:read")
    mine = infer(server, bearer(acme)).headers["x-request-id"]
    theirs = infer(server, bearer(globex)).headers["x-request-id"]
    time.sleep(0.5)  # receipts are written every 50 ms
    own = httpx.get(f"{server.url}/v1/receipts/{mine}", headers=bearer(acme), timeout=10)
    assert own.status_code == 200 and own.json()["tenant"] == "acme"
    other = httpx.get(f"{server.url}/v1/receipts/{theirs}", headers=bearer(acme), timeout=10)
    assert other.status_code == 404
    listed = httpx.get(f"{server.url}/v1/receipts?limit=100", headers=bearer(acme), timeout=10)
    tenants = {r["tenant"] for r in listed.json()["receipts"]}
    assert tenants == {"acme"}
    asked = httpx.get(f"{server.url}/v1/receipts?tenant=globex", headers=bearer(acme))
    assert asked.status_code == 403
    no_scope = make_key(server, "acme", "infer")
    assert httpx.get(f"{server.url}/v1/receipts", headers=bearer(no_scope)).status_code == 403


def test_revoked_and_rotated_keys(server: Server) -> None:
    key = make_key(server, "acme", "infer")
    assert infer(server, bearer(key)).status_code == 200
    revoked = httpx.delete(f"{server.url}/admin/keys/{key['id']}", headers=ADMIN, timeout=10)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = infer(server, bearer(key))
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]

    old = make_key(server, "acme", "infer")
    rotated = httpx.post(
        f"{server.url}/admin/keys/{old['id']}/rotate", json={"grace_s": 0}, headers=ADMIN
    )
    assert rotated.status_code == 201
    new = rotated.json()
    assert new["tenant"] == "acme" and new["scopes"] == ["infer"] and new["id"] != old["id"]
    assert infer(server, bearer(new)).status_code == 200
    assert infer(server, bearer(old)).status_code == 401  # no grace: ended at once


def test_bad_keys_and_bad_requests_to_create_them(server: Server) -> None:
    forged = {"Authorization": "Bearer sgk_aaaaaaaaaaaa_" + "x" * 43}
    assert infer(server, forged).status_code == 401
    assert infer(server, {"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401
    for body in (
        {"tenant": "../x", "scopes": ["infer"]},
        {"tenant": "acme", "scopes": ["root"]},
        {"tenant": "acme", "scopes": []},
        {"tenant": "acme", "scopes": ["infer"], "limits": {"requests_per_s": -1}},
        {"tenant": "acme", "scopes": ["infer"], "expires_in_s": "soon"},
    ):
        made = httpx.post(f"{server.url}/admin/keys", json=body, headers=ADMIN, timeout=10)
        assert made.status_code == 400, (body, made.text)
    assert httpx.post(f"{server.url}/admin/keys", json={"tenant": "acme"}).status_code == 401


def test_the_registry_holds_no_key_and_records_last_use(server: Server) -> None:
    key = make_key(server, "acme", "infer")
    assert infer(server, bearer(key)).status_code == 200
    registry = server.workdir / "registry.db"  # type: ignore[attr-defined]
    with sqlite3.connect(registry) as db:
        stored = db.execute("SELECT hash FROM surge_keys WHERE id = ?", (key["id"],)).fetchone()
        dump = "\n".join(db.iterdump())
    assert stored[0].startswith("pbkdf2_sha256$")
    assert key["key"] not in dump and key["key"].split("_", 2)[2] not in dump
    assert key["key"] not in server.log()


def test_surge_keys_cli(server: Server) -> None:
    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "surge", "keys", *args, "--url", server.url,
             "--admin-key", ADMIN_KEY],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    created = cli("create", "--tenant", "globex", "--scope", "infer", "--rps", "50",
                  "--name", "batch jobs")  # fmt: skip
    token = next(
        line.strip() for line in created.splitlines() if "sgk_" in line and " " not in line.strip()
    )
    key_id = token.split("_")[1]
    assert infer(server, {"Authorization": f"Bearer {token}"}).status_code == 200
    listing = cli("list")
    assert key_id in listing and "globex" in listing and "batch jobs" in listing
    assert token not in listing
    assert "revoked" in cli("revoke", key_id)
    assert infer(server, {"Authorization": f"Bearer {token}"}).status_code == 401


def test_without_required_auth_stock_clients_need_no_key(demo_server: Server) -> None:
    # The demo config: auth off. The OpenAI client's placeholder key is not refused.
    client = openai.OpenAI(base_url=f"{demo_server.url}/v1", api_key="unused", max_retries=0)
    assert len(client.embeddings.create(model="embed", input="hi").data) == 1
    rows = np.asarray(digits_rows(1)[0])
    assert rows.shape == (1, 64)
