"""The model repository stays inside its root and loads only files its manifest pins.

Names that would walk out of the root, symlinks that lead out of it, manifests
without checksums and files changed since their checksum was taken are refused
with a message that names the model, version and file, never a server path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import surge.repository
from surge.config import ConfigError, load_config
from surge.core.errors import SurgeError
from surge.repository import ModelRepository, ModelVersion, link_version, write_manifest
from surge.serving.factory import DeploymentFactory

MODEL_PY = "class Model:\n    def predict(self, batch):\n        return batch\n"
TENSORS = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
    "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
}


def python_version(version_dir: Path, source: str = MODEL_PY) -> Path:
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(source)
    write_manifest(version_dir, {"runtime": "python", "artifact": "model.py", **TENSORS})
    return version_dir


@pytest.fixture
def root(tmp_path: Path) -> Path:
    python_version(tmp_path / "repo" / "m" / "1")
    return tmp_path / "repo"


def refusal(root: Path, model: str, version: str) -> SurgeError:
    with pytest.raises(SurgeError) as caught:
        ModelRepository(root).version(model, version).verify_checksums()
    error = caught.value
    assert str(root) not in error.message and str(root.resolve()) not in error.message
    assert 400 <= error.status < 500, error
    return error


@pytest.mark.parametrize(
    "model, version",
    [("m", "../1"), ("m", "/etc"), ("m", "a/b"), ("m", "."), ("m", ".."), ("m", ""),
     ("..", "1"), ("/tmp", "1"), ("m", "1\x00"), ("m", "v" * 129)],
)  # fmt: skip
def test_names_that_are_not_one_plain_directory_are_refused(root, model, version):
    error = refusal(root, model, version)
    assert (error.code, error.status) == ("invalid_input", 400)
    assert "not a valid name" in error.message


def test_a_plain_version_loads_and_its_paths_lie_inside_the_root(root):
    version = ModelRepository(root).version("m", "1")
    version.verify_checksums()
    assert version.artifact_path == (root / "m" / "1" / "model.py").resolve()


def test_a_symlink_out_of_the_root_is_refused_and_one_inside_it_is_not(root, tmp_path):
    python_version(tmp_path / "elsewhere" / "1")
    (root / "m" / "outside").symlink_to(tmp_path / "elsewhere" / "1", target_is_directory=True)
    (root / "m" / "latest").symlink_to(root / "m" / "1", target_is_directory=True)
    error = refusal(root, "m", "outside")
    assert error.code == "outside_repository"
    assert "'m'" in error.message and "'outside'" in error.message
    ModelRepository(root).version("m", "latest").verify_checksums()
    assert [v.version for v in ModelRepository(root).list()] == ["1", "latest"]


def test_a_manifest_or_artifact_linked_from_outside_is_refused(root, tmp_path):
    outside = python_version(tmp_path / "elsewhere" / "1")
    linked_manifest = root / "m" / "2"
    linked_manifest.mkdir()
    (linked_manifest / "model.yaml").symlink_to(outside / "model.yaml")
    assert refusal(root, "m", "2").code == "outside_repository"
    # Checksums that match do not make a file outside the root part of the version.
    linked_artifact = root / "m" / "3"
    linked_artifact.mkdir()
    (linked_artifact / "model.py").symlink_to(outside / "model.py")
    (linked_artifact / "model.yaml").write_text((outside / "model.yaml").read_text())
    error = refusal(root, "m", "3")
    assert error.code == "outside_repository" and "m/3/model.py" in error.message


def test_a_missing_version_names_only_the_model_and_version(root):
    error = refusal(root, "m", "7")
    assert error.status == 404
    assert "m/7/model.yaml" in error.message


def manifest_of(root: Path, ref: str) -> dict:
    return yaml.safe_load((root / ref / "model.yaml").read_text())


def rewrite(root: Path, ref: str, **changes) -> None:
    doc = {**manifest_of(root, ref), **changes}
    (root / ref / "model.yaml").write_text(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"checksums": {}}, "model.py: no sha256 in checksums"),
        ({"checksums": {"model.py": "not-a-digest"}}, "not sha256 hex"),
        ({"artifact": "../../m/1/model.py"}, "inside the version directory"),
        ({"artifact": "/etc/passwd"}, "inside the version directory"),
        ({"parameters": {"extra_files": ["vocab.txt"]}}, "vocab.txt: no sha256"),
    ],
)
def test_a_manifest_must_pin_every_file_it_names(root, changes, words):
    rewrite(root, "m/1", **changes)
    error = refusal(root, "m", "1")
    assert (error.code, error.status) == ("bad_manifest", 422)
    assert error.message.startswith("m/1/model.yaml: ") and words in error.message


def test_a_changed_artifact_refuses_to_load(root):
    (root / "m" / "1" / "model.py").write_text(MODEL_PY + "import os; os.system('id')\n")
    error = refusal(root, "m", "1")
    assert (error.code, error.status) == ("checksum_mismatch", 422)
    assert "m@1: m/1/model.py has sha256" in error.message


def test_a_file_changed_after_a_check_is_hashed_again(root, monkeypatch):
    version = ModelRepository(root).version("m", "1")
    version.verify_checksums()
    hashed: list[Path] = []
    real = surge.repository.sha256_file
    monkeypatch.setattr(surge.repository, "sha256_file", lambda p: hashed.append(p) or real(p))
    version.verify_checksums()
    assert hashed == []  # unchanged: a stat, no read (a deployment's start, on the loop)
    # Same size, mtime set back: the change still shows (ctime cannot be set back).
    artifact = root / "m" / "1" / "model.py"
    before = artifact.stat()
    artifact.write_text(MODEL_PY.replace("batch", "BATCH"))
    os.utime(artifact, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(SurgeError, match="has sha256"):
        version.verify_checksums()


def test_a_runtime_may_open_only_files_the_manifest_pins(root):
    version: ModelVersion = ModelRepository(root).version("m", "1")
    (root / "m" / "1" / "tokenizer.json").write_text("{}")
    with pytest.raises(SurgeError) as caught:
        version.file("tokenizer.json")
    assert caught.value.status == 422 and "'tokenizer.json' has no sha256" in caught.value.message


def test_the_factory_checks_checksums_where_it_runs_off_the_loop(root):
    (root / "m" / "1" / "model.py").write_text("import os\n")
    factory = DeploymentFactory(None, ModelRepository(root), {}, None)  # type: ignore[arg-type]
    with pytest.raises(SurgeError) as caught:
        factory.version("m", "1")
    assert caught.value.code == "checksum_mismatch"


def test_a_linked_version_loads_where_a_symlinked_one_would_not(root, tmp_path):
    other = tmp_path / "other"
    link_version(root / "m" / "1", other / "m" / "1")
    assert not (other / "m" / "1").is_symlink()
    ModelRepository(other).version("m", "1").verify_checksums()


@pytest.mark.parametrize("field", ["model", "version"])
def test_the_config_refuses_endpoint_names_that_leave_the_repository(tmp_path, field):
    path = tmp_path / "surge.yaml"
    path.write_text(yaml.safe_dump({"endpoints": {"e": {field: "../../etc"}}}))
    with pytest.raises(ConfigError, match=f"endpoints.e.{field}.*not a valid name"):
        load_config(path)
