"""The README's snippets work against the demo as written (only the port differs)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
CLIENT_SNIPPETS = [
    (lang, code)
    for lang, code in re.findall(r"```(bash|python)\n(.*?)```", README, re.S)
    if "127.0.0.1:8000" in code and "make serve" not in code
]
SNIPPETS = [(lang, code) for lang, code in CLIENT_SNIPPETS if "chat.completions" not in code]
CHAT_SNIPPETS = [code for _, code in CLIENT_SNIPPETS if "chat.completions" in code]


def test_the_readme_has_the_three_client_snippets():
    kinds = [("openai" in c, "tritonclient" in c, c.startswith("curl")) for _, c in SNIPPETS]
    assert sorted(kinds) == sorted(
        [(True, False, False), (False, True, False), (False, False, True)]
    )
    assert len(CHAT_SNIPPETS) == 1


@pytest.fixture(scope="module")
def chat_demo_server(tmp_path_factory):
    """The demo's tiny-chat model alone (the protocol tests' demo server skips it: it
    loads torch)."""
    from conftest import run_server

    from surge.config import load_config
    from surge.llm.tiny_model import build_tiny_chat_model

    workdir = tmp_path_factory.mktemp("chat-demo")
    demo = load_config()
    (name,) = demo.llm.models
    path = build_tiny_chat_model(workdir / "tiny-chat")
    config = {"llm": {"models": {name: {"backends": [{"local": {"path": str(path)}}],
                                        "default_max_tokens": 32}}}}  # fmt: skip
    with run_server(config, workdir) as server:
        yield server


def test_the_chat_snippet_streams_from_the_demos_local_model(chat_demo_server):
    code = CHAT_SNIPPETS[0].replace("127.0.0.1:8000", f"127.0.0.1:{chat_demo_server.port}")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("tokens: 8")


@pytest.mark.parametrize("lang,code", SNIPPETS, ids=["curl", "openai", "tritonclient"])
def test_snippet_runs_against_the_demo(demo_server, lang, code):
    code = code.replace("127.0.0.1:8000", f"127.0.0.1:{demo_server.port}")
    command = ["bash", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    out = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if "openai" in code:
        assert out.stdout.split()[0] == "384"
    elif "tritonclient" in code:
        predicted, expected = re.findall(r"\[([\d ]+)\]", out.stdout.replace("\n", " "))
        agree = np.mean([a == b for a, b in zip(predicted.split(), expected.split(), strict=True)])
        assert agree >= 0.75
    else:
        assert '"label","datatype":"INT64","shape":[1],"data":[0]' in out.stdout
