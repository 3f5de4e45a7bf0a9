"""Nothing secret is logged: a check over every server log a test run writes.

`run_server` (tests/integration/conftest.py) registers each server's log with
`SERVER_LOGS`, with the secrets that server was given (the admin key, passwords in its
database URLs, `SURGE_FEEDBACK_SECRET`); when the server stops, its log is scanned
(a test may delete its directory before the session ends). At the end of the session
(tests/conftest.py) any leak fails the run, naming the file, line and kind of secret,
never the secret itself: the report lands in CI logs too.

Besides the secrets a server was given, two shapes are flagged wherever they appear:
a whole client key (`sgk_<12-character id>_<secret>`: the id alone is fine to log) and
a URL that carries a password (`scheme://user:password@`; `:***@` is the redacted form).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CLIENT_KEY = re.compile(r"sgk_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{20,}")
URL_PASSWORD = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^@\s/]+)@")
REDACTED = "***"
# A shorter literal would match ordinary words; a secret that short is a bug of its own.
MIN_LITERAL_CHARS = 8
SECRET_VARIABLES = ("SURGE_FEEDBACK_SECRET", "SURGE_ADMIN_KEY", "SURGE_RECEIPT_SINK_URL")


@dataclass(frozen=True)
class Leak:
    path: Path
    line: int
    kind: str
    shown: str  # the secret cut to a few characters: enough to tell which, not to use

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} ({self.shown})"


def _masked(value: str) -> str:
    return value[:6] + "…"


def find_leaks(text: str, known: Mapping[str, str], path: Path = Path("-")) -> list[Leak]:
    """Every line of `text` that shows a known secret (kind -> value) or a secret's shape."""
    literals = {kind: value for kind, value in known.items() if len(value) >= MIN_LITERAL_CHARS}
    leaks = []
    for number, line in enumerate(text.splitlines(), start=1):
        for kind, value in literals.items():
            if value in line:
                leaks.append(Leak(path, number, kind, _masked(value)))
        for match in CLIENT_KEY.finditer(line):
            leaks.append(Leak(path, number, "client key", _masked(match.group())))
        for match in URL_PASSWORD.finditer(line):
            if match.group(1) != REDACTED:
                leaks.append(Leak(path, number, "password in a URL", _masked(match.group())))
    return leaks


def secrets_of(config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """The secrets a server started with this config and environment holds: passwords of
    the URLs anywhere in its config, and the secret environment variables."""
    found: dict[str, str] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]")
        elif isinstance(node, str):
            for match in URL_PASSWORD.finditer(node):
                found[f"password of {where}"] = match.group(1)

    walk(config, "")
    for name in SECRET_VARIABLES:
        value = environ.get(name)
        if value:
            found[name] = value
            walk(value, name)
    return found


@dataclass
class LogRegistry:
    """The server logs of this run: watched when a server starts, scanned when it stops."""

    watched: dict[Path, dict[str, str]] = field(default_factory=dict)
    scanned: int = 0
    leaks: list[Leak] = field(default_factory=list)

    def watch(self, path: Path, known: Mapping[str, str]) -> None:
        self.watched[path] = dict(known)

    def collect(self, path: Path) -> list[Leak]:
        """Scan a stopped server's log (gone already: nothing to scan)."""
        known = self.watched.pop(path, {})
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        found = find_leaks(text, known, path)
        self.scanned += 1
        self.leaks.extend(found)
        return found

    def finish(self) -> list[Leak]:
        """Scan the logs of servers never stopped through `collect`; every leak found."""
        for path in list(self.watched):
            self.collect(path)
        return self.leaks


SERVER_LOGS = LogRegistry()


def fail_session_on_leaks(session: pytest.Session, registry: LogRegistry = SERVER_LOGS) -> None:
    """The session-end check: a run whose servers logged a secret fails, whatever its tests
    said, and says where."""
    leaks = registry.finish()
    if not leaks:
        return
    lines = [f"{len(leaks)} secret(s) in {registry.scanned} server log(s):"]
    lines += [f"  {leak}" for leak in leaks[:50]]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "secrets in server logs", red=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print("\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
