"""The README's snippets work against the demo as written (only the port differs)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
SNIPPETS = [
    (lang, code)
    for lang, code in re.findall(r"```(bash|python)\n(.*?)```", README, re.S)
    if "127.0.0.1:8000" in code and "make serve" not in code
]


def test_the_readme_has_the_three_client_snippets():
    kinds = [("openai" in c, "tritonclient" in c, c.startswith("curl")) for _, c in SNIPPETS]
    assert sorted(kinds) == sorted(
        [(True, False, False), (False, True, False), (False, False, True)]
    )


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
