"""The model repository: `<repo>/<model>/<version>/` with an artifact and a `model.yaml`.

Several versions of a model sit side by side; the config says which one serves.
The manifest lists the runtime, the tensors and a sha256 per file, and a
version whose files do not match its checksums refuses to load.

Model and version names come from clients (the admin API, the registry, the
config), so the repository is confined: a name is one plain path segment, and
every path it opens, symlinks resolved, stays under the repository's root. What
it says when it refuses names the model, version and file relative to the root,
never where the repository sits on the server's disk.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from surge.core.errors import SurgeError
from surge.core.tensors import NUMPY_DTYPES, TensorSpec

MANIFEST = "model.yaml"
# One path segment of plain characters; 128 keeps every name well inside a file
# system's 255-byte limit (a longer one would fail in the OS, not here, with a 500).
NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
SHA256 = re.compile(r"(sha256:)?[0-9a-f]{64}")


def name_problem(kind: str, value: object) -> str | None:
    """Why `value` cannot name a model or version (`kind`), or None when it can."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or value in (".", ".."):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        return (
            f"{kind} {shown} is not a valid name: use 1 to 128 letters, digits, "
            "'.', '_' or '-' (one directory name, not '.' or '..')"
        )
    return None


def _file_problem(name: str) -> str | None:
    """Why a file named in a manifest cannot be one of its version's files."""
    path = PurePosixPath(name)
    if not name or "\\" in name or "\x00" in name or path.is_absolute() or ".." in path.parts:
        return f"file {name!r} must be a path inside the version directory"
    return None


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
    runtime: str = Field(description="python | sklearn | onnx | embeddings | upstream")
    artifact: str | None = Field(
        None, description="main artifact file, relative to the version dir"
    )
    inputs_: list[TensorManifest] = Field(default_factory=list, alias="inputs")
    outputs_: list[TensorManifest] = Field(default_factory=list, alias="outputs")
    checksums: dict[str, str] = Field(
        default_factory=dict,
        description="file -> sha256 hex; required for the artifact and every extra_files entry",
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="runtime-specific")
    description: str = ""

    @property
    def inputs(self) -> list[TensorSpec]:
        return [t.spec() for t in self.inputs_]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [t.spec() for t in self.outputs_]

    def named_files(self) -> list[str]:
        """The files the manifest names: its artifact and `parameters.extra_files`."""
        extra = self.parameters.get("extra_files", [])
        if not isinstance(extra, list) or not all(isinstance(f, str) for f in extra):
            raise ValueError("parameters.extra_files must be a list of file names")
        return [*([self.artifact] if self.artifact else []), *extra]

    @model_validator(mode="after")
    def _every_file_is_pinned(self) -> Manifest:
        # A file without a checksum could be swapped under the version unnoticed, and
        # for the python runtime that means running whatever code was put there.
        for name in [*self.named_files(), *self.checksums]:
            if problem := _file_problem(name):
                raise ValueError(problem)
        unpinned = [name for name in self.named_files() if name not in self.checksums]
        if unpinned:
            raise ValueError(
                f"{', '.join(unpinned)}: no sha256 in checksums; every file model.yaml names "
                "needs one (surge.repository.write_manifest records them)"
            )
        malformed = [
            name for name, digest in self.checksums.items() if not SHA256.fullmatch(digest)
        ]
        if malformed:
            raise ValueError(f"checksums of {', '.join(malformed)} are not sha256 hex digests")
        return self


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: str
    path: Path  # the version directory, symlinks resolved
    manifest: Manifest
    root: Path  # the repository root, symlinks resolved
    # file -> the stat fingerprint it had when its sha256 last matched: a second check
    # of an unchanged file (a deployment's start, after the deploy hashed off the loop)
    # only stats it. ctime changes with any write and cannot be set back by a user.
    _verified: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.version}"

    def relative(self, name: str) -> str:
        """A file of this version as messages show it: relative to the repository."""
        return f"{self.model}/{self.version}/{name}"

    def file(self, name: str) -> Path:
        """A file of this version, pinned by a checksum and inside the repository."""
        if name not in self.manifest.checksums:
            raise SurgeError(
                "bad_manifest",
                f"{self.ref}: {name!r} has no sha256 in model.yaml's checksums "
                "(list it in parameters.extra_files when writing the manifest)",
                422,
            )
        path = (self.path / name).resolve()
        if not path.is_relative_to(self.root):
            raise SurgeError(
                "outside_repository",
                f"{self.ref}: {self.relative(name)} leads out of the model repository",
                400,
            )
        return path

    @property
    def artifact_path(self) -> Path:
        if not self.manifest.artifact:
            raise SurgeError("bad_manifest", f"{self.ref}: model.yaml names no artifact", 422)
        return self.file(self.manifest.artifact)

    def verify_checksums(self) -> None:
        """Refuse files that do not match model.yaml. Hashes: call it off the event loop
        (a repeat for unchanged files only stats them)."""
        for name, expected in self.manifest.checksums.items():
            file, shown = self.file(name), self.relative(name)
            try:
                info = file.stat()
                seen = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
                if self._verified.get(name) == seen:
                    continue
                actual = sha256_file(file)
            except FileNotFoundError:
                raise SurgeError(
                    "checksum_mismatch", f"{self.ref}: {shown} is missing", 422
                ) from None
            except OSError as exc:  # its strerror: the OS's message names the absolute path
                raise SurgeError(
                    "checksum_mismatch", f"{self.ref}: cannot read {shown}: {exc.strerror}", 422
                ) from None
            wanted = expected.removeprefix("sha256:")
            if actual != wanted:
                self._verified.pop(name, None)
                raise SurgeError(
                    "checksum_mismatch",
                    f"{self.ref}: {shown} has sha256 {actual[:12]}…, model.yaml expects "
                    f"{wanted[:12]}…; rebuild or re-register the version",
                    422,
                )
            self._verified[name] = seen


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(version_dir: Path, manifest: dict[str, Any]) -> None:
    """Write `model.yaml`, recording the sha256 of every file it names."""
    files = [manifest.get("artifact"), *manifest.get("parameters", {}).get("extra_files", [])]
    manifest = {**manifest, "checksums": {f: sha256_file(version_dir / f) for f in files if f}}
    Manifest.model_validate(manifest)
    (version_dir / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))


def link_version(source: Path, target: Path) -> None:
    """Put a version directory into another repository, its files hard-linked (copied
    across file systems). A symlinked version would lead out of the repository it is
    put in, and refuse to load. Caches (`.cache`) are left behind: derived, and
    rebuilt where they are wanted."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        source, target, copy_function=link_or_copy, ignore=shutil.ignore_patterns(".cache")
    )


def _manifest_problem(error: ValidationError | ValueError | yaml.YAMLError) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
            for e in error.errors(include_url=False)
        )
    return str(error)


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def version(self, model: str, version: str) -> ModelVersion:
        """One version, checked: plain names, inside the root, a valid manifest.
        Reads the disk: call it off the event loop."""
        for kind, value in (("model", model), ("version", version)):
            if problem := name_problem(kind, value):
                raise SurgeError("invalid_input", problem, 400)
        root = self.root.resolve()
        path = (root / model / version).resolve()
        manifest_file = (path / MANIFEST).resolve()
        if not (path.is_relative_to(root) and manifest_file.is_relative_to(root)):
            raise SurgeError(
                "outside_repository",
                f"model {model!r} version {version!r} leads out of the model repository "
                "(a symlink?); copy or hard-link the version into it",
                400,
            )
        if not manifest_file.is_file():
            raise SurgeError(
                "not_found",
                f"model {model!r} version {version!r} not found in the model repository "
                f"(expected {model}/{version}/{MANIFEST})",
                404,
            )
        try:
            manifest = Manifest.model_validate(yaml.safe_load(manifest_file.read_text()) or {})
            manifest.inputs, manifest.outputs  # noqa: B018 - validate datatypes now
        except OSError as exc:  # unreadable: its strerror, not the path the OS names
            raise SurgeError(
                "bad_manifest", f"{model}/{version}/{MANIFEST}: {exc.strerror}", 422
            ) from None
        except (ValidationError, ValueError, yaml.YAMLError) as exc:
            raise SurgeError(
                "bad_manifest", f"{model}/{version}/{MANIFEST}: {_manifest_problem(exc)}", 422
            ) from None
        return ModelVersion(model, version, path, manifest, root)

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
