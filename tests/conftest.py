"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge.demo.build import ensure_demo_models
from surge.repository import ModelRepository, ModelVersion
from tests.secret_scan import fail_session_on_leaks

# The same repository `make serve` builds into, so a machine builds each demo model once.
DEMO_MODELS = Path(__file__).parents[1] / ".surge" / "models"


@pytest.fixture(scope="session")
def demo_models() -> Path:
    ensure_demo_models(DEMO_MODELS)
    return DEMO_MODELS


@pytest.fixture(scope="session")
def embed_version() -> ModelVersion:
    """all-MiniLM-L6-v2 exported to ONNX, built once and kept between test runs (~10 s)."""
    ensure_demo_models(DEMO_MODELS, ("embed",))
    return ModelRepository(DEMO_MODELS).version("embed", "1")


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Every server log of the run was scanned as its server stopped (tests/secret_scan.py).
    fail_session_on_leaks(session)
