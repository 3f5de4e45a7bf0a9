"""Closed-loop load with wrk: C connections, each sending its next request on each answer.

wrk is C and costs a few microseconds of CPU per request, so on a small
machine it takes far less from the server than a Python client would. The
Lua script rotates POST bodies per request, stops a thread at a request cap
(so every run is bounded in requests as well as time) and prints one JSON
line from `done()` that this module reads. wrk's own CPU time is read from
the kernel when it exits (wait4), so every result says how much of the
machine the generator took.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

MARKER = "WRKJSON "

LUA = """
local bodies = {%(bodies)s}
local count, cap, i = 0, %(cap)d, 0
wrk.method = "POST"
%(headers)s
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
response = function(status, headers, body)
  count = count + 1
  if count >= cap then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, '
    .. '"read": %%d, "write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, '
    .. '"p90_us": %%d, "p99_us": %%d, "max_us": %%d, "mean_us": %%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def _lua_string(text: str) -> str:
    # A long bracket needs no escaping as long as the text never closes it.
    if "]==]" in text:
        raise ValueError("body contains the Lua long-bracket terminator ]==]")
    return f"[==[{text}]==]"


def script(bodies: list[str], headers: dict[str, str], cap_per_thread: int) -> str:
    # The spaces matter: "[[" would open a Lua long string.
    header_lines = "\n".join(
        f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()
    )
    return LUA % {
        "bodies": ", ".join(_lua_string(b) for b in bodies),
        "cap": cap_per_thread,
        "headers": header_lines,
        "marker": MARKER,
    }


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    bodies: list[str],
    *,
    connections: int,
    duration_s: float,
    max_requests: int,
    headers: dict[str, str] | None = None,
    threads: int = 1,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Run wrk against `url` and return throughput, latency and wrk's own CPU use."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks only target 127.0.0.1, not {url}")
    threads = max(1, min(threads, connections))
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    cap = max(1, max_requests // threads)
    with tempfile.TemporaryDirectory(prefix="surge-wrk-") as tmp:
        lua = Path(tmp) / "load.lua"
        lua.write_text(script(bodies, all_headers, cap))
        out = Path(tmp) / "stdout"
        argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={timeout_s:g}s",
            "-s",
            str(lua),
            url,
        ]
        with out.open("wb") as stdout:
            started = time.monotonic()
            process = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT)
        # wait4 returns the child's CPU time; Popen.wait would throw it away.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        text = out.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith(MARKER)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {text[-2000:]}")
    raw = json.loads(line[len(MARKER) :])
    seconds = raw["duration_us"] / 1e6
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    ok = raw["requests"] - raw["status"]
    return {
        "generator": "wrk",
        "connections": connections,
        "threads": threads,
        "duration_s": round(seconds, 3),
        "requests": raw["requests"],
        "ok": ok,
        "non_2xx": raw["status"],
        "socket_errors": socket_errors,
        "rps": round(raw["requests"] / seconds, 1),
        "ok_rps": round(ok / seconds, 1),
        "capped": raw["requests"] >= cap * threads,
        "latency_ms": {
            "p50": raw["p50_us"] / 1000,
            "p90": raw["p90_us"] / 1000,
            "p99": raw["p99_us"] / 1000,
            "max": raw["max_us"] / 1000,
            "mean": round(raw["mean_us"] / 1000, 3),
        },
        "generator_cores": round((usage.ru_utime + usage.ru_stime) / wall, 3),
    }
