"""Runtimes chosen by name. Modules import lazily so the core stays light."""

from __future__ import annotations

import importlib

from surge.core.errors import SurgeError
from surge.runtimes.base import Runtime

RUNTIMES: dict[str, str] = {
    "python": "surge.runtimes.python:PythonRuntime",
    "sklearn": "surge.runtimes.sklearn:SklearnRuntime",
    "onnx": "surge.runtimes.onnx:OnnxRuntime",
    "embeddings": "surge.runtimes.embeddings:EmbeddingsRuntime",
    "upstream": "surge.runtimes.upstream:UpstreamRuntime",
}


def runtime_class(name: str) -> type[Runtime]:
    try:
        target = RUNTIMES[name]
    except KeyError:
        raise SurgeError(
            "unknown_runtime", f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}", 422
        ) from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
