"""The report: every figure with its target and whether it was met, as JSON and markdown."""

from __future__ import annotations

import json
import operator
import os
import platform
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
SYMBOLS = {">=": "≥", "<=": "≤", "<": "<", "==": "="}


@dataclass(frozen=True)
class Figure:
    bench: str  # the benchmark that produced it (its --only name)
    name: str
    value: float | int | str | None
    unit: str = ""
    target: str = ""  # e.g. "≥ 0.9 x"; empty: reported, not judged
    met: bool | None = None  # None: no target
    note: str = ""
    headline: int = 0  # > 0: one of the figures, in this place of the headline table


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # raw results, into the JSON only

    def add(self, bench: str, name: str, value: Any, unit: str = "", note: str = "") -> None:
        self.figures.append(Figure(bench, name, value, unit, note=note))

    def judge(
        self,
        bench: str,
        name: str,
        value: float | None,
        op: str,
        threshold: float,
        unit: str = "",
        note: str = "",
        headline: int = 0,
    ) -> None:
        """A figure with a target; a value the run could not measure counts as not met."""
        met = value is not None and OPS[op](value, threshold)
        target = f"{SYMBOLS[op]} {threshold:g}{' ' + unit if unit else ''}"
        self.figures.append(Figure(bench, name, value, unit, target, met, note, headline))

    def guarded(self, bench: str, body: Callable[[], object], log: Callable[[str], None]) -> None:
        """Run one benchmark; a failure is reported as a figure and the others still run."""
        try:
            body()
        except Exception as exc:
            log(f"{bench} failed:\n{traceback.format_exc()}")
            self.details.setdefault("errors", {})[bench] = traceback.format_exc()
            self.figures.append(Figure(bench, "error", repr(exc)[:200], "", "runs", False))

    def sort(self, order: list[str]) -> None:
        self.figures.sort(key=lambda f: order.index(f.bench) if f.bench in order else len(order))


def busy_note(run: dict[str, Any]) -> str:
    """A warning on a figure measured while other processes used the machine."""
    cores = run.get("background_cores", 0.0)
    return f"; other processes used {cores:.2f} cores" if cores > 0.25 else ""


def machine_facts() -> dict[str, Any]:
    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "git": _git_state(),
        "packages": {
            name: pkg(name)
            for name in (
                "onnxruntime",
                "tokenizers",
                "numpy",
                "uvicorn",
                "uvloop",
                "httptools",
                "starlette",
                "orjson",
                "aiohttp",
            )
        },
    }


def _git_state() -> dict[str, Any]:
    """The commit measured and whether src/ differed from it (read-only git calls)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # never write the index

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args],
            cwd=Path(__file__).parents[1],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("diff", "--quiet", "HEAD", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return {}
    if head.returncode != 0:
        return {}
    return {"commit": head.stdout.strip(), "src_modified": changed.returncode == 1}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def markdown(report: Report, machine: dict[str, Any], title: str) -> str:
    mark = {True: "met", False: "**not met**", None: ""}
    lines = [
        f"# {title}",
        "",
        f"{machine['date']} · {machine['cpu_count']} CPUs ({machine['cpu_model']}) · "
        f"Python {machine['python']} · onnxruntime {machine['packages']['onnxruntime']} · "
        f"load average at start {machine['load_average_at_start']} · "
        f"commit {machine.get('git', {}).get('commit', '?')}"
        + (" (src/ modified)" if machine.get("git", {}).get("src_modified") else ""),
        "",
    ]
    headline = sorted((f for f in report.figures if f.headline), key=lambda f: f.headline)
    if headline:
        lines += [
            "## The issue's figures",
            "",
            "| figure | value | target | result | notes |",
            "|---|---:|---|---|---|",
        ]
        for f in headline:
            value = f"{_fmt(f.value)} {f.unit}".strip()
            lines.append(f"| {f.name} | {value} | {f.target} | {mark[f.met]} | {f.note} |")
        met = sum(1 for f in headline if f.met)
        lines += ["", f"{met} of {len(headline)} met.", "", "## Every figure", ""]
    lines += [
        "| benchmark | figure | value | target | result | notes |",
        "|---|---|---:|---|---|---|",
    ]
    for f in report.figures:
        value = f"{_fmt(f.value)} {f.unit}".strip()
        lines.append(f"| {f.bench} | {f.name} | {value} | {f.target} | {mark[f.met]} | {f.note} |")
    judged = [f for f in report.figures if f.met is not None]
    lines += ["", f"{sum(1 for f in judged if f.met)} of {len(judged)} targets met.", ""]
    return "\n".join(lines)


def write(stem: Path, report: Report, machine: dict[str, Any], title: str) -> str:
    """Write `<stem>.json` and `<stem>.md`; return the markdown."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(report, machine, title)
    payload = {
        "title": title,
        "machine": machine,
        "figures": [asdict(f) for f in report.figures],
        "details": report.details,
    }
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(text)
    return text
