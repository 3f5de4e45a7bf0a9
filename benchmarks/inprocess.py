"""The embeddings model called directly: the ceiling any server of it can reach.

No HTTP, no event loop, no queue. Two ways, side by side:
- the reference (`reference_embed.py`, in its own process): onnxruntime +
  tokenizers + numpy written apart from surge. Its best emb/s is the
  in-process limit, the denominator of the HTTP ratios, so a slowdown inside
  surge's runtime shows in the ratios instead of hiding on both sides;
- surge's own `EmbeddingsRuntime.run` called back to back from this process,
  for comparison with the reference, and for the int8-vs-fp32 comparison.
The two must agree on the vectors (cosine within 1e-5), which is checked here.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from benchmarks.loadgen import percentiles
from benchmarks.report import Report, busy_note
from benchmarks.servers import REPO_ROOT, machine_busy, wait_for_quiet
from benchmarks.settings import BATCH_SIZES, Settings
from benchmarks.workload import SENTENCES, varied_sentences
from surge.config import DEMO_CONFIG
from surge.repository import ModelRepository
from surge.runtimes.base import Runtime, RuntimeSettings
from surge.runtimes.registry import runtime_class


def load_embed(repository: Path, threads: int, quantization: str = "none") -> Runtime:
    version = ModelRepository(repository).version("embed", "1")
    settings = RuntimeSettings(threads=threads, max_batch_size=32, quantization=quantization)
    runtime = runtime_class(version.manifest.runtime)(version, settings)
    runtime.load()
    return runtime


def as_text(texts: list[str]) -> np.ndarray:
    """A BYTES tensor as the v2 adapter hands it to the runtime: 1-D object array of bytes."""
    out = np.empty(len(texts), dtype=object)
    out[:] = [t.encode("utf-8") for t in texts]
    return out


def throughput(
    runtime: Runtime, sentences: list[str], batch_size: int, duration_s: float, max_batches: int
) -> dict[str, Any]:
    """Embeddings per second at one batch size, cycling through `sentences`."""
    n = len(sentences)
    batches = [
        as_text([sentences[(k * batch_size + j) % n] for j in range(batch_size)])
        for k in range(n)  # n batches cover every rotation of the sentence set
    ]
    for batch in batches[:3]:  # first calls of a shape pay one-off allocations
        runtime.run({"text": batch})
    process = psutil.Process()
    cpu_before, busy_before = process.cpu_times(), machine_busy()
    times: list[float] = []
    started = time.perf_counter()
    end = started + duration_s
    while time.perf_counter() < end and len(times) < max_batches:
        t0 = time.perf_counter()
        runtime.run({"text": batches[len(times) % len(batches)]})
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    cpu_after, busy_after = process.cpu_times(), machine_busy()
    own = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / wall
    return {
        "batch_size": batch_size,
        "batches": len(times),
        "emb_per_s": round(len(times) * batch_size / wall, 1),
        "batch_ms": percentiles(times),
        "process_cores": round(own, 3),
        "background_cores": round(max(0.0, (busy_after - busy_before) / wall - own), 3),
    }


def parallel_throughput(
    runtimes: list[Runtime], sentences: list[str], batch_size: int, duration_s: float
) -> dict[str, Any]:
    """Total emb/s of several runtimes, each called back to back from its own thread, as a
    server runs its replicas (ONNX Runtime releases the GIL while it computes)."""
    n = len(sentences)
    warmed = threading.Barrier(len(runtimes) + 1)  # every runtime has run its shapes once
    go = threading.Barrier(len(runtimes) + 1)  # the clock has started
    deadline = [0.0]
    done: list[tuple[int, float]] = []

    def worker(index: int, runtime: Runtime) -> None:
        batches = [
            as_text([sentences[(k * batch_size + j + index) % n] for j in range(batch_size)])
            for k in range(n)
        ]
        for batch in batches[:3]:
            runtime.run({"text": batch})
        warmed.wait()
        go.wait()
        count = 0
        while time.perf_counter() < deadline[0]:
            runtime.run({"text": batches[count % len(batches)]})
            count += 1
        done.append((count, time.perf_counter()))

    threads = [
        threading.Thread(target=worker, args=(i, rt), daemon=True) for i, rt in enumerate(runtimes)
    ]
    for thread in threads:
        thread.start()
    warmed.wait()
    busy_before = machine_busy()
    cpu_before = psutil.Process().cpu_times()
    started = time.perf_counter()
    deadline[0] = started + duration_s
    go.wait()
    for thread in threads:
        thread.join()
    wall = max(t for _, t in done) - started
    cpu_after = psutil.Process().cpu_times()
    own = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / wall
    rows = sum(count for count, _ in done) * batch_size
    return {
        "batch_size": batch_size,
        "replicas": len(runtimes),
        "emb_per_s": round(rows / wall, 1),
        "process_cores": round(own, 3),
        "background_cores": round(max(0.0, (machine_busy() - busy_before) / wall - own), 3),
    }


def embed_all(runtime: Runtime, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
    """Every text's embedding in order, and the seconds that took."""
    started = time.perf_counter()
    parts = [
        runtime.run({"text": as_text(texts[i : i + batch_size])})["embedding"]
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(parts), time.perf_counter() - started


def cosine_rows(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    return np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-12)


def demo_layout(cores: int) -> tuple[int, int]:
    """(replicas, threads per replica) the demo config gives `embed` on this machine."""
    embed = yaml.safe_load(DEMO_CONFIG.read_text())["endpoints"]["embed"]
    replicas = int(embed.get("replicas", 1))
    return replicas, int(embed.get("threads_per_replica") or max(1, cores // replicas))


def run_reference(settings: Settings, vectors: Path) -> dict[str, Any]:
    """The reference sweep (reference_embed.py) in its own interpreter: nothing of surge
    is imported there. Its progress lines pass through to this process's stderr."""
    d = settings.durations
    argv = [
        sys.executable,
        "-m",
        "benchmarks.reference_embed",
        str(settings.repository / "embed" / "1"),
        f"--threads={settings.threads}",
        f"--seconds={d.inprocess_s:g}",
        f"--rounds={d.inprocess_rounds}",
        f"--quiet-wait={d.quiet_wait_s:g}",
        f"--vectors={vectors}",
    ]
    budget = 120 + len(BATCH_SIZES) * d.inprocess_rounds * (d.inprocess_s + d.quiet_wait_s + 5)
    done = subprocess.run(argv, stdout=subprocess.PIPE, cwd=REPO_ROOT, timeout=budget, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"reference_embed failed ({done.returncode}); see its stderr above")
    return json.loads(done.stdout)


def runtime_sweep(
    runtime: Runtime, settings: Settings, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """surge's runtime at each batch size; the best of the rounds at each size."""
    d = settings.durations
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in BATCH_SIZES}
    for _ in range(d.inprocess_rounds):
        for size in BATCH_SIZES:
            wait_for_quiet(log, max_wait_s=d.quiet_wait_s)
            result = throughput(runtime, SENTENCES, size, d.inprocess_s, 100_000)
            log(
                f"surge runtime batch {size}: {result['emb_per_s']} emb/s, "
                f"{result['process_cores']} cores, background {result['background_cores']}"
            )
            runs[size].append(result)
    return [max(rs, key=lambda r: r["emb_per_s"]) for rs in runs.values()]


def compare_vectors(runtime: Runtime, vectors: Path) -> dict[str, Any]:
    """1 - cosine between the reference's vectors and surge's runtime's, on the same
    texts in the same batches (so both pad the same way)."""
    reference = np.load(vectors)
    ours = {
        "sentences": embed_all(runtime, SENTENCES, len(SENTENCES))[0],
        "varied": embed_all(runtime, varied_sentences(256), 32)[0],
    }
    out: dict[str, Any] = {}
    for name, candidate in ours.items():
        distance = 1.0 - cosine_rows(reference[name], candidate)
        out[name] = {"texts": len(candidate), "max": float(distance.max())}
        out[name]["mean"] = float(distance.mean())
    out["max"] = max(out["sentences"]["max"], out["varied"]["max"])
    return out


def bench_inprocess(
    settings: Settings, report: Report, log: Callable[[str], None]
) -> dict[str, float]:
    """(1) emb/s at each batch size. Returns the best of the reference ("limit"), the HTTP
    benchmarks' denominator; the best of surge's runtime ("runtime"), for comparison; and
    ("layout") the best of the demo's replica layout run the same way, when that layout
    differs from one runtime on every core.

    Other processes can only slow a run down, so the best of the rounds at each size is
    the closest to the undisturbed figure.
    """
    d = settings.durations
    vectors = settings.workdir / "reference_vectors.npz"
    reference = run_reference(settings, vectors)
    best = reference["best"]
    log(f"reference: best {best['emb_per_s']} emb/s at batch {best['batch_size']}")
    runtime = load_embed(settings.repository, settings.threads)
    sweep = runtime_sweep(runtime, settings, log)
    agreement = compare_vectors(runtime, vectors)
    log(f"reference vs surge runtime: 1 - cosine max {agreement['max']:.2e}")
    del runtime
    gc.collect()
    top = max(sweep, key=lambda r: r["emb_per_s"])
    report.details["inprocess"] = {
        "threads": settings.threads,
        "reference": reference,
        "surge_runtime": sweep,
        "reference_vs_runtime_1_minus_cosine": agreement,
    }
    report.add(
        "inprocess",
        "in-process limit (reference: onnxruntime + tokenizers + numpy, no surge)",
        best["emb_per_s"],
        "emb/s",
        f"{settings.threads} ORT threads, tokenizer in the timed loop, batch "
        f"{best['batch_size']}" + busy_note(best),
    )
    for r in reference["per_size"]:
        report.add(
            "inprocess",
            f"reference, batch {r['batch_size']}",
            r["emb_per_s"],
            "emb/s",
            f"batch p50 {r['batch_ms_p50']:.1f} ms, {r['process_cores']} cores busy" + busy_note(r),
        )
    report.add(
        "inprocess",
        "surge runtime (EmbeddingsRuntime.run), best",
        top["emb_per_s"],
        "emb/s",
        f"batch {top['batch_size']}; {top['emb_per_s'] / best['emb_per_s']:.3f}x the reference"
        + busy_note(top),
    )
    for r in sweep:
        report.add(
            "inprocess",
            f"surge runtime, batch {r['batch_size']}",
            r["emb_per_s"],
            "emb/s",
            f"batch p50 {r['batch_ms']['p50']:.1f} ms, {r['process_cores']} cores busy"
            + busy_note(r),
        )
    report.judge(
        "inprocess",
        "reference vs surge runtime: 1 - cosine, max",
        agreement["max"],
        "<=",
        1e-5,
        "",
        f"{len(SENTENCES)} benchmark sentences (one batch) and 256 varied texts (batches of 32)",
    )
    limits = {"limit": best["emb_per_s"], "runtime": top["emb_per_s"]}
    replicas, threads = demo_layout(settings.threads)
    if (replicas, threads) != (1, settings.threads):
        runtimes = [load_embed(settings.repository, threads) for _ in range(replicas)]
        layout_runs = []
        for _ in range(d.inprocess_rounds):
            for size in (16, 32):
                wait_for_quiet(log, max_wait_s=d.quiet_wait_s)
                result = parallel_throughput(runtimes, SENTENCES, size, d.inprocess_s)
                log(f"inprocess {replicas} x {threads} threads, batch {size}: {result}")
                layout_runs.append(result)
        del runtimes
        gc.collect()
        top = max(layout_runs, key=lambda r: r["emb_per_s"])
        report.details["inprocess"]["demo_layout"] = layout_runs
        report.add(
            "inprocess",
            "demo layout, best throughput",
            top["emb_per_s"],
            "emb/s",
            f"{replicas} runtimes x {threads} ORT thread(s), each called from its own thread "
            f"as the demo's replicas are, batch {top['batch_size']}" + busy_note(top),
        )
        limits["layout"] = top["emb_per_s"]
    return limits


def bench_int8(settings: Settings, report: Report, log: Callable[[str], None]) -> None:
    """(6) int8 vs fp32: throughput on the serving sentences, cosine on varied texts."""
    started = time.perf_counter()
    fp32 = load_embed(settings.repository, settings.threads, "none")
    int8 = load_embed(settings.repository, settings.threads, "int8")
    load_s = time.perf_counter() - started
    runs: dict[str, list[dict[str, Any]]] = {"fp32": [], "int8": []}
    for _ in range(settings.durations.int8_rounds):  # alternate: background drift hits both
        for name, runtime in (("fp32", fp32), ("int8", int8)):
            wait_for_quiet(log, max_wait_s=settings.durations.quiet_wait_s)
            result = throughput(runtime, SENTENCES, 32, settings.durations.inprocess_s, 100_000)
            runs[name].append(result)
    top = {name: max(rs, key=lambda r: r["emb_per_s"]) for name, rs in runs.items()}
    best = {name: r["emb_per_s"] for name, r in top.items()}
    varied = varied_sentences(256)
    reference, fp32_s = embed_all(fp32, varied, 32)
    candidate, int8_s = embed_all(int8, varied, 32)
    del fp32, int8
    gc.collect()
    cosine = cosine_rows(reference, candidate)
    worst = int(cosine.argmin())
    log(f"int8: {best}, cosine mean {cosine.mean():.4f} min {cosine.min():.4f}")
    report.details["int8"] = {
        "runs": runs,
        "load_both_s": round(load_s, 2),
        "varied_texts": len(varied),
        "distinct_varied_texts": len(set(varied)),
        "varied_fp32_s": round(fp32_s, 3),
        "varied_int8_s": round(int8_s, 3),
        "cosine_p01": round(float(np.quantile(cosine, 0.01)), 5),
        "worst_text": varied[worst][:300],
    }
    for name in ("fp32", "int8"):
        note = "batch 32, serving sentences" + busy_note(top[name])
        report.add("int8", f"{name} throughput", best[name], "emb/s", note)
    report.add(
        "int8",
        "int8 / fp32 throughput",
        round(best["int8"] / best["fp32"], 3),
        "x",
        "batch 32, serving sentences",
    )
    report.add(
        "int8",
        "int8 / fp32 throughput, varied texts",
        round(fp32_s / int8_s, 3),
        "x",
        f"{len(varied)} texts of 1-400 words, batch 32",
    )
    report.add(
        "int8",
        "cosine int8 vs fp32, mean",
        round(float(cosine.mean()), 5),
        "",
        f"{len(varied)} varied texts",
    )
    report.add(
        "int8",
        "cosine int8 vs fp32, min",
        round(float(cosine.min()), 5),
        "",
        f"{len(varied)} varied texts",
    )
