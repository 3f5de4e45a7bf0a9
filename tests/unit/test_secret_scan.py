"""The log check that fails a test run whose servers logged a secret, on planted logs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.secret_scan import LogRegistry, fail_session_on_leaks, find_leaks, secrets_of

CLIENT_KEY = "sgk_ab12cd34ef56_Zx9-Qw8_Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNm-_q"
PLANTED = f"""\
INFO surge.api listening on 127.0.0.1:8000
INFO surge.keys key ab12cd34ef56 made for tenant acme
WARNING surge.api Authorization: Bearer {CLIENT_KEY}
INFO surge.cluster redis at redis://:***@127.0.0.1:6379/0 up
ERROR surge.store cannot reach the registry at postgresql://surge:hunter2-hunter2@db:5432/surge
DEBUG surge.bandit token signed with feedback-secret-value-42
INFO surge.admin deploy by tester with test-admin-key
"""


def _kinds(leaks) -> list[tuple[int, str]]:
    return [(leak.line, leak.kind) for leak in leaks]


def test_every_planted_secret_is_found_on_its_line():
    known = {"the admin key": "test-admin-key", "SURGE_FEEDBACK_SECRET": "feedback-secret-value-42"}
    assert _kinds(find_leaks(PLANTED, known)) == [
        (3, "client key"),
        (5, "password in a URL"),
        (6, "SURGE_FEEDBACK_SECRET"),
        (7, "the admin key"),
    ]


def test_what_may_be_logged_is_not_flagged():
    clean = (
        "key ab12cd34ef56 made; sgk_ab12cd34ef56 revoked\n"  # the id is not the key
        "redis at redis://:***@127.0.0.1:6379/0 up\n"  # redacted as registry.redact does
        "registry at postgresql://postgres@127.0.0.1:5432/test\n"  # a user, no password
        "GET http://127.0.0.1:8000/v2/health/ready 200\n"
    )
    assert find_leaks(clean, {"the admin key": "test-admin-key"}) == []


def test_a_server_is_given_the_passwords_of_its_urls_and_the_secret_variables():
    config = {
        "registry_url": "postgresql://surge:s3cr%zzet@db/surge",  # badly encoded: libpq echoes it
        "observability": {"receipts": {"url": "postgresql://reader@db/receipts"}},
        "redis_url": "redis://:redis-password-1@cache:6379/0",
    }
    environ = {"SURGE_FEEDBACK_SECRET": "feedback-secret-value-42", "HOME": "/root"}
    assert secrets_of(config, environ) == {
        "password of registry_url": "s3cr%zzet",
        "password of redis_url": "redis-password-1",
        "SURGE_FEEDBACK_SECRET": "feedback-secret-value-42",
    }
    # The password alone, as libpq quotes it in an error, is caught too.
    leaks = find_leaks('invalid percent-encoded token: "s3cr%zzet"', secrets_of(config, environ))
    assert _kinds(leaks) == [(1, "password of registry_url")]


def _session() -> SimpleNamespace:
    lines: list[str] = []
    reporter = SimpleNamespace(
        ensure_newline=lambda: None,
        write_sep=lambda *a, **k: lines.append(a[1]),
        write_line=lines.append,
    )
    plugins = SimpleNamespace(get_plugin=lambda name: reporter)
    return SimpleNamespace(config=SimpleNamespace(pluginmanager=plugins), exitstatus=0, lines=lines)


def test_a_leak_fails_the_session_and_the_report_does_not_repeat_the_secret(tmp_path: Path):
    registry = LogRegistry()
    leaky, clean, gone = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "gone.log"
    leaky.write_text(PLANTED)
    clean.write_text("INFO surge.api listening\n")
    for path in (leaky, clean, gone):
        registry.watch(path, {"the admin key": "test-admin-key"})
    registry.collect(leaky)  # stopped during the run; the others are scanned at the end
    session = _session()

    fail_session_on_leaks(session, registry)

    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    report = "\n".join(session.lines)
    assert f"{leaky}:3: client key" in report
    assert f"{leaky}:7: the admin key" in report
    assert registry.scanned == 2  # the deleted log is skipped, not an error
    assert CLIENT_KEY not in report and "hunter2-hunter2" not in report


def test_a_clean_run_keeps_its_exit_status(tmp_path: Path):
    registry = LogRegistry()
    log = tmp_path / "server.log"
    log.write_text("INFO surge.api listening\nINFO surge.keys key ab12cd34ef56 made\n")
    registry.watch(log, {"the admin key": "test-admin-key"})
    session = _session()
    fail_session_on_leaks(session, registry)
    assert session.exitstatus == 0
    assert session.lines == []
