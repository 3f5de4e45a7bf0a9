"""The `surge` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def surge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "surge", *args], capture_output=True, text=True, timeout=60,
        cwd=REPO_ROOT,
    )  # fmt: skip


def test_check_accepts_the_example_config(demo_models):
    out = surge("check", str(REPO_ROOT / "examples" / "surge.yaml"))
    assert out.returncode == 0, out.stderr
    assert "ok (2 endpoint(s))" in out.stdout


def test_check_rejects_a_bad_config_with_key_paths(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints:\n  embed:\n    max_queue: -1\n    colour: blue\n")
    out = surge("check", str(bad))
    assert out.returncode != 0
    assert "endpoints.embed.max_queue: Input should be greater than or equal to 1" in out.stderr
    assert "endpoints.embed.colour: unknown key" in out.stderr


def test_check_reports_a_missing_model_version(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model_repository: {tmp_path}\nendpoints: {{ghost: {{version: '3'}}}}\n")
    out = surge("check", str(cfg))
    assert out.returncode == 1 and "ghost/3 is not in" in out.stderr


def test_models_lists_versions_and_ready_state(demo_server, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model_repository: {REPO_ROOT / '.surge' / 'models'}\n"
        f"server: {{port: {demo_server.port}}}\nendpoints: {{digits: {{}}}}\n"
    )
    out = surge("models", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split()[:2]): line for line in out.stdout.splitlines()[2:]}
    assert "sklearn" in rows["digits", "1"]
    assert rows["digits", "1"].split()[-2:] == ["digits", "ready"]
    assert rows["digits", "2"].endswith("not configured")  # built, not serving
    assert rows["embed", "1"].endswith("not configured")
