"""Dispatch cost of Ray replicas: `embed` at 32 closed-loop clients, 2 Ray replicas of
1 CPU each (the gateway's own replica on standby, `serve_on_gateway: false`) against
1 local replica of 2 threads, on the same machine; plus the microseconds a batch spends
in dispatch (gateway thread, object store, actor call) beyond the runtime's own compute.

    .venv/bin/python -m benchmarks.ray_dispatch [--seconds 15]

Writes benchmarks/results/ray_dispatch.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.servers import REPO_ROOT, surge_server
from benchmarks.workload import V2_BODIES

RESULTS = REPO_ROOT / "benchmarks" / "results"
REPOSITORY = REPO_ROOT / ".surge" / "models"
CLIENTS = 32
TARGET_RATIO = 0.85
BATCHING = {"max_batch_size": 32, "max_queue_delay_ms": 2}


def closed(url: str, seconds: float) -> dict[str, Any]:
    spec = {
        "url": f"{url}/v2/models/embed/infer",
        "mode": "closed",
        "concurrency": CLIENTS,
        "duration_s": seconds,
        "max_requests": 10**7,
        "bodies": V2_BODIES,
    }
    return loadgen.run_loadgen(spec)


def throughput(name: str, endpoint: dict[str, Any], seconds: float, workdir: Path) -> dict:
    with surge_server(name, {"embed": endpoint}, REPOSITORY, workdir) as server:
        closed(server.url, min(3.0, seconds))  # warm the path (connections, shapes)
        result = closed(server.url, seconds)
    print(f"{name}: {result['ok_rps']} ok/s, p50 {result['latency_ok_ms'].get('p50')} ms")
    return result


def dispatch_us(batches: int = 200) -> dict[str, float]:
    """Wall of `RayReplica.execute` minus the actor's `runtime.run`, per batch size."""
    import ray

    from surge.repository import ModelRepository
    from surge.runtimes.base import RuntimeSettings
    from surge.runtimes.registry import runtime_class
    from surge.serving.ray_actor import RayReplica, ReplicaActor

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        version = ModelRepository(REPOSITORY).version("embed", "1")
        handle = (
            ray.remote(ReplicaActor)
            .options(num_cpus=1)
            .remote(
                str(version.root), "embed", "1", {"threads": 1, "max_batch_size": 32}, [1, 32], 1
            )
        )
        replica = RayReplica("bench", handle)
        local = runtime_class(version.manifest.runtime)(version, RuntimeSettings(threads=1))
        local.load()
        trips = []
        for _ in range(batches):
            began = time.perf_counter()
            ray.get(handle.health.remote())
            trips.append(time.perf_counter() - began)
        out = {"ray_round_trip": round(statistics.median(trips) * 1e6, 1)}
        for size in (1, 32):
            inputs = local.warmup_inputs(size)
            added = []
            for _ in range(batches):
                began = time.monotonic()
                result = replica.execute([inputs], None, began + 30)
                wall = time.monotonic() - began
                added.append(wall - (result.compute_end - result.compute_start))
            out[str(size)] = round(statistics.median(added) * 1e6, 1)
        replica.close()
        return out
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    local_cfg = {"replicas": 1, "threads_per_replica": 2, "batching": BATCHING}
    ray_cfg = {
        "replicas": 1,
        "threads_per_replica": 1,
        "batching": BATCHING,
        "placement": {
            "ray": {"address": None, "num_cpus": 1, "replicas": 2, "serve_on_gateway": False}
        },
    }
    # Interleaved rounds: the machine is shared, and its other load drifts over minutes.
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            local = throughput("local", local_cfg, args.seconds, Path(tmp))
            on_ray = throughput("ray", ray_cfg, args.seconds, Path(tmp))
            rounds.append((local, on_ray))
    added = dispatch_us()
    ratios = [r["ok_rps"] / max(lo["ok_rps"], 1e-9) for lo, r in rounds]
    ratio = sum(r["ok_rps"] for _, r in rounds) / max(sum(lo["ok_rps"] for lo, _ in rounds), 1e-9)
    doc = {
        "clients": CLIENTS,
        "seconds": args.seconds,
        "ratio": round(ratio, 3),
        "round_ratios": [round(x, 3) for x in ratios],
        "target": TARGET_RATIO,
        "added_us_per_batch": added,
        "rounds": [{"local": lo, "ray": r} for lo, r in rounds],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_dispatch.json").write_text(json.dumps(doc, indent=1))
    lines = [
        "# Ray dispatch cost (`benchmarks/ray_dispatch.py`)",
        "",
        f"`embed`, v2, {CLIENTS} closed-loop clients, {args.seconds:.0f} s per run, "
        "interleaved, one 2-core machine (shared: figures move with other work on it).",
        "",
        "| replicas | ok/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for n, pair in enumerate(rounds, 1):
        for label, r in zip(("1 local x 2 threads", "2 Ray actors x 1 CPU"), pair, strict=True):
            ms = r["latency_ok_ms"]
            lines.append(
                f"| round {n}: {label} | {r['ok_rps']} | {ms.get('p50')} | {ms.get('p99')} |"
            )
    lines += [
        "",
        f"Throughput ratio Ray / local: **{ratio:.2f}x** over all rounds (per round: "
        + ", ".join(f"{x:.2f}x" for x in ratios)
        + f"; target >= {TARGET_RATIO}x). The Ray replicas run 2 batches in flight each "
        "(`batches_in_flight`), the gateway's own replica on standby.",
        "",
        "Added per batch by dispatch (gateway thread + object store + actor call, beyond "
        "the runtime's own compute; median of 200, in-process): "
        + ", ".join(f"{k} row(s): {v} µs" for k, v in added.items() if k != "ray_round_trip")
        + f"; Ray's own round trip (an empty actor call) is {added['ray_round_trip']} µs here.",
    ]
    (RESULTS / "ray_dispatch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
