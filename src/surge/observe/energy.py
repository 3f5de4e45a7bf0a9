"""Energy per batch: measured CPU time x a per-core power figure, or RAPL counters, plus
NVML's energy counter for a GPU replica.

One meter per replica, used only on that replica's thread around `runtime.run`:
`begin()` before, `end(token)` after, so every reading is a few syscalls per batch
(never per request). Which source a figure came from travels with it (`source`), so
a receipt can say "rapl" or "estimate" rather than passing one off as the other.

CPU time: the replica thread's own CPU time (CLOCK_THREAD_CPUTIME_ID) times the
replica's intra-op threads. ONNX Runtime runs the calling thread as one worker of
its pool and splits a batch evenly across the pool, so one thread's CPU time times
the pool size is the batch's CPU time without reading every pool thread's counter.
For single-threaded runtimes (scikit-learn, plain Python) it is exact.

RAPL (`/sys/class/powercap/intel-rapl:N/energy_uj`) counts the whole package: a
batch is charged the package's joules over its run times this replica's share of
the machine's cores, since the other cores' draw belongs to other work.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surge.config_observe import EnergyConfig

log = logging.getLogger("surge.energy")


@dataclass(frozen=True)
class BatchEnergy:
    cpu_s: float  # CPU core-seconds the batch used
    joules: float  # CPU (or package) joules, plus the GPU's when there is one
    source: str  # "rapl" | "estimate", with "+nvml" when GPU energy is included


class RaplCounters:
    """The package-level RAPL energy counters (intel-rapl:0, intel-rapl:1, ...), if readable."""

    def __init__(self, root: Path) -> None:
        self.zones: list[tuple[Path, int]] = []
        for zone in sorted(root.glob("intel-rapl:*")):
            if zone.name.count(":") != 1:  # intel-rapl:0:0 is a sub-zone of package 0
                continue
            counter = zone / "energy_uj"
            try:
                int(counter.read_text())
                wrap = int((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue  # unreadable (often root-only): not a usable source
            self.zones.append((counter, wrap))

    def __bool__(self) -> bool:
        return bool(self.zones)

    def read_uj(self) -> list[int]:
        return [int(counter.read_text()) for counter, _ in self.zones]

    def joules_between(self, before: list[int], after: list[int]) -> float:
        total = 0
        for (_, wrap), b, a in zip(self.zones, before, after, strict=True):
            total += a - b if a >= b else a + wrap - b  # the counter wrapped around
        return total / 1e6


class GpuEnergy:
    """NVML's total-energy counter of one GPU (millijoules since the driver loaded)."""

    def __init__(self, index: int = 0) -> None:
        import pynvml  # nvidia-ml-py; only imported for a cuda replica

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.read_mj()  # fails here, at start, on a GPU without the counter

    def read_mj(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))


class EnergyMeter:
    def __init__(
        self, config: EnergyConfig, replica_cores: int, machine_cores: int, device: str = "cpu"
    ) -> None:
        self.cores = max(1, replica_cores)
        self.share = min(1.0, self.cores / max(1, machine_cores))
        self.watts_per_core = config.watts_per_core
        self.rapl: RaplCounters | None = None
        if config.source in ("auto", "rapl"):
            counters = RaplCounters(Path(config.powercap_path))
            if counters:
                self.rapl = counters
            elif config.source == "rapl":
                log.warning(
                    "energy.source is rapl but no readable counter is under %s; "
                    "using the per-core estimate",
                    config.powercap_path,
                )
        self.gpu: GpuEnergy | None = None
        if device == "cuda":
            try:
                self.gpu = GpuEnergy()
            except Exception as exc:  # no NVML, no driver, or no counter on this GPU
                log.warning("GPU energy unavailable (%s); counting CPU energy only", exc)
        self.source = ("rapl" if self.rapl else "estimate") + ("+nvml" if self.gpu else "")

    def begin(self) -> tuple[float, Any, int | None]:
        rapl = self.rapl.read_uj() if self.rapl else None
        gpu = self.gpu.read_mj() if self.gpu else None
        return time.thread_time(), rapl, gpu

    def end(self, token: tuple[float, Any, int | None]) -> BatchEnergy:
        cpu_before, rapl_before, gpu_before = token
        cpu_s = (time.thread_time() - cpu_before) * self.cores
        if self.rapl is not None and rapl_before is not None:
            joules = self.rapl.joules_between(rapl_before, self.rapl.read_uj()) * self.share
        else:
            joules = cpu_s * self.watts_per_core
        if self.gpu is not None and gpu_before is not None:
            with contextlib.suppress(Exception):  # a failed read loses one batch's GPU share
                joules += (self.gpu.read_mj() - gpu_before) / 1000.0
        return BatchEnergy(cpu_s, joules, self.source)
