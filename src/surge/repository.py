"""The model repository: `<repo>/<model>/<version>/` with an artifact and a `model.yaml`.

Several versions of a model sit side by side; the config says which one serves.
The manifest lists the runtime, the tensors and a sha256 per file, and a
version whose files do not match its checksums refuses to load.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from surge.core.errors import SurgeError
from surge.core.tensors import NUMPY_DTYPES, TensorSpec

MANIFEST = "model.yaml"


class TensorManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    datatype: str
    shape: list[int]

    def spec(self) -> TensorSpec:
        if self.datatype not in NUMPY_DTYPES:
            raise ValueError(f"unknown datatype {self.datatype!r}")
        return TensorSpec(self.name, self.datatype, tuple(self.shape))


class Manifest(BaseModel):
    """The contents of `model.yaml`."""

    model_config = ConfigDict(extra="forbid")
    runtime: str = Field(description="python | sklearn | onnx | embeddings")
    artifact: str | None = Field(
        None, description="main artifact file, relative to the version dir"
    )
    inputs_: list[TensorManifest] = Field(default_factory=list, alias="inputs")
    outputs_: list[TensorManifest] = Field(default_factory=list, alias="outputs")
    checksums: dict[str, str] = Field(default_factory=dict, description="file -> sha256 hex")
    parameters: dict[str, Any] = Field(default_factory=dict, description="runtime-specific")
    description: str = ""

    @property
    def inputs(self) -> list[TensorSpec]:
        return [t.spec() for t in self.inputs_]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [t.spec() for t in self.outputs_]


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: str
    path: Path
    manifest: Manifest

    @property
    def artifact_path(self) -> Path:
        if not self.manifest.artifact:
            raise SurgeError("bad_manifest", f"{self.ref}: model.yaml names no artifact", 500)
        return self.path / self.manifest.artifact

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.version}"

    def verify_checksums(self) -> None:
        for name, expected in self.manifest.checksums.items():
            file = self.path / name
            if not file.exists():
                raise SurgeError("checksum_mismatch", f"{self.ref}: {name} is missing", 500)
            actual = sha256_file(file)
            if actual != expected.removeprefix("sha256:"):
                raise SurgeError(
                    "checksum_mismatch",
                    f"{self.ref}: {name} has sha256 {actual[:12]}…, model.yaml expects "
                    f"{expected.removeprefix('sha256:')[:12]}…; rebuild or re-register the version",
                    500,
                )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(version_dir: Path, manifest: dict[str, Any]) -> None:
    """Write `model.yaml`, filling in checksums for the files it names."""
    files = [manifest["artifact"], *manifest.get("parameters", {}).get("extra_files", [])]
    manifest = {**manifest, "checksums": {f: sha256_file(version_dir / f) for f in files if f}}
    Manifest.model_validate(manifest)
    (version_dir / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def version(self, model: str, version: str) -> ModelVersion:
        path = self.root / model / version
        manifest_file = path / MANIFEST
        if not manifest_file.exists():
            raise SurgeError(
                "not_found",
                f"model {model!r} version {version!r} not found in {self.root} "
                f"(expected {manifest_file})",
                404,
            )
        try:
            manifest = Manifest.model_validate(yaml.safe_load(manifest_file.read_text()) or {})
            manifest.inputs, manifest.outputs  # noqa: B018 - validate datatypes now
        except (ValidationError, ValueError, yaml.YAMLError) as exc:
            raise SurgeError("bad_manifest", f"{manifest_file}: {exc}", 500) from exc
        return ModelVersion(model, version, path, manifest)

    def list(self) -> list[ModelVersion]:
        found: list[ModelVersion] = []
        if not self.root.exists():
            return found
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                if (version_dir / MANIFEST).exists():
                    try:
                        found.append(self.version(model_dir.name, version_dir.name))
                    except SurgeError:
                        continue
        return found
