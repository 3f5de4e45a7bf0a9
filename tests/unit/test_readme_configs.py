"""The README's copyable language-model configs are valid configs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from surge.config import load_config

README = (Path(__file__).parents[2] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.index("\n## ", start + 1)
    return README[start:end]


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


@pytest.mark.parametrize("index", [0, 1], ids=["upstream provider", "local runtime"])
def test_the_language_model_configs_load_as_written(index: int, tmp_path: Path) -> None:
    block = yaml_blocks(section("Language models"))[index]
    path = tmp_path / "surge.yaml"
    path.write_text(block)
    config = load_config(path)
    assert config.llm.models  # a model a client can call
    for model in config.llm.models.values():
        for backend in model.backends:
            assert backend.local is not None or backend.provider in config.llm.providers


def test_every_yaml_block_of_the_new_sections_is_yaml() -> None:
    for title in ("Language models", "Caching"):
        for block in yaml_blocks(section(title)):
            assert isinstance(yaml.safe_load(block), dict)
