"""An admin deploy loads only what lies in the model repository, pinned by its checksums.

Over real HTTP: names that walk out of the repository, a symlink that leads out of
it, a manifest without checksums and an artifact changed after its checksum was
taken are each refused with a 4xx in the admin error shape that names no server
path; none of their code runs, and the live version goes on serving.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from conftest import run_server
from rollout_helpers import deploy, digit_body, digits_config, status

from surge.repository import link_version, write_manifest

# Model code that leaves a mark when imported: a refused version must never run it.
MARKING_MODEL = """
from pathlib import Path
Path({marker!r}).write_text("ran")

class Model:
    def predict(self, batch):
        return batch
"""


def marking_version(version_dir: Path, marker: Path, *, checksums: bool = True) -> None:
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(MARKING_MODEL.format(marker=str(marker)))
    manifest = {"runtime": "python", "artifact": "model.py", "parameters": {"class": "Model"}}
    if checksums:
        write_manifest(version_dir, manifest)
    else:
        (version_dir / "model.yaml").write_text(yaml.safe_dump(manifest))


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marks") / "ran"


@pytest.fixture(scope="module")
def repo(demo_models: Path, marker: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("confined-repo")
    for version in ("1", "2"):
        link_version(demo_models / "digits" / version, root / "digits" / version)
    outside = tmp_path_factory.mktemp("outside")
    marking_version(outside / "1", marker)  # checksummed: only where it lies is wrong
    (root / "digits" / "linked").symlink_to(outside / "1", target_is_directory=True)
    marking_version(root / "digits" / "unpinned", marker, checksums=False)
    marking_version(root / "digits" / "tampered", marker)
    model_py = root / "digits" / "tampered" / "model.py"
    model_py.write_text(model_py.read_text() + "# changed after its checksum was taken\n")
    return root


CASES = [
    ({"version": "../x"}, "invalid_input", 400, "'version' '../x' is not a valid name"),
    ({"version": "/etc"}, "invalid_input", 400, "not a valid name"),
    ({"version": "a/b"}, "invalid_input", 400, "not a valid name"),
    ({"version": ".."}, "invalid_input", 400, "not a valid name"),
    ({"model": "../../tmp", "version": "1"}, "invalid_input", 400, "'model'"),
    ({"version": "linked"}, "outside_repository", 400, "leads out of the model repository"),
    ({"version": "unpinned"}, "bad_manifest", 422, "model.py: no sha256 in checksums"),
    ({"version": "tampered"}, "checksum_mismatch", 422, "digits/tampered/model.py has sha256"),
    ({"version": "404"}, "not_found", 404, "digits/404/model.yaml"),
]  # fmt: skip


def test_a_deploy_outside_the_repository_or_its_checksums_is_refused(repo, marker, tmp_path):
    with run_server(digits_config(repo), tmp_path) as server:
        for body, code, status_code, words in CASES:
            answer = deploy(server.url, **body)
            assert answer.status_code == status_code, (body, answer.text)
            error = answer.json()["error"]
            assert error["code"] == code and words in error["message"], (body, error)
            assert error["request_id"] == answer.headers["x-request-id"]
            for path in (repo, repo.resolve(), marker.parent, tmp_path):
                assert str(path) not in answer.text, (body, answer.text)
            assert not marker.exists(), f"{body}: a refused version's code ran"
        # Still serving the live version, and a good deploy still goes through.
        infer = httpx.post(f"{server.url}/v2/models/digits/infer", json=digit_body(0))
        assert infer.status_code == 200, infer.text
        assert [v["version"] for v in status(server.url)["versions"]] == ["1"]
        swap = deploy(server.url, version="2")
        assert swap.status_code == 200, swap.text
        assert [v["version"] for v in swap.json()["versions"]] == ["2"]
        assert "Traceback" not in server.log()
