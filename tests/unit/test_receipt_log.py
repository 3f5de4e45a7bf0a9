"""Receipts without a server: the builder, energy sources, the bounded buffer, the store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from surge.config import Config
from surge.config_observe import CostConfig, EnergyConfig, ReceiptsConfig
from surge.core.context import RequestContext
from surge.observe.cost import CostLedger
from surge.observe.energy import EnergyMeter, RaplCounters
from surge.observe.metrics import Metrics
from surge.observe.observer import Observer
from surge.observe.receipt import build_receipt, record_of
from surge.observe.receipts import ReceiptLog
from surge.observe.sink_client import SinkClient
from surge.runtimes.base import RuntimeSettings
from surge.store.receipts import ReceiptFilter
from surge.store.registry import open_store

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
PRICES = {"small": CostConfig(per_compute_second=2.0, per_item=0.01, currency="EUR")}


def run(model: str, endpoint: str, rows: int, batch_rows: int, compute_s: float, **extra):
    return {
        "model": model, "endpoint": endpoint, "version": model.split("@")[1], "role": "live",
        "rows": rows, "batch_rows": batch_rows, "compute_s": compute_s, "queue_s": 0.002,
        "cpu_s": compute_s, "energy_j": compute_s * 10, "energy_source": "estimate", **extra,
    }  # fmt: skip


def finished_ctx(request_id: str = "r1", status: int = 200) -> RequestContext:
    ctx = RequestContext(request_id, "smart", deadline=101.0, received=100.0)
    ctx.wall_time = 1_700_000_000.0
    ctx.tenant = "acme"
    ctx.status = status
    for stage, t in (("validated", 100.001), ("admitted", 100.002), ("batched", 100.004),
                     ("compute_start", 100.0045), ("compute_end", 100.010),
                     ("responded", 100.012)):  # fmt: skip
        ctx.stamp(stage, t)
    return ctx


def test_a_receipt_prices_each_run_and_says_why_in_one_line():
    ctx = finished_ctx()
    ctx.decide("cascade", "digits@1", "3 of 8 row(s) below 0.95: escalated to big",
               action="escalate", tier=0, confidence=0.61, threshold=0.95)  # fmt: skip
    ctx.runs += [
        run("digits@1", "small", 8, 32, 0.004),
        run("digits@2", "big", 3, 3, 0.006),  # no price configured: free
        run("digits@3", "small", 8, 8, 0.001, role="shadow"),
    ]
    receipt = build_receipt(ctx, PRICES)
    assert receipt["served_by"] == "digits@2" and receipt["escalated"] is True
    assert receipt["why"] == (
        "cascade: 3 of 8 row(s) below 0.95: escalated to big -> digits@1; "
        "answered by digits@2 (escalated)"
    )
    first, second, shadow = receipt["runs"]
    assert first["cost"] == pytest.approx(0.004 * 2.0 + 8 * 0.01)
    assert first["share_of_batch"] == 0.25
    assert second["cost"] == 0.0
    assert shadow["role"] == "shadow"  # priced too: the shadow's compute was spent
    assert receipt["cost"]["total"] == pytest.approx(first["cost"] + shadow["cost"])
    assert receipt["compute_ms"] == pytest.approx(10.0)  # live runs only
    assert receipt["total_ms"] == pytest.approx(12.0)
    assert receipt["stages_ms"] == pytest.approx(
        {"validate": 1, "admit": 1, "queue": 2, "batch": 0.5, "compute": 5.5, "respond": 2}
    )
    assert receipt["time"] == "2023-11-14T22:13:20.000+00:00"


def test_an_error_receipt_names_the_error_and_serves_nobody():
    ctx = finished_ctx(status=504)
    ctx.error = "deadline_exceeded"
    receipt = build_receipt(ctx, PRICES)
    assert receipt["served_by"] is None and receipt["cost"]["total"] == 0
    assert receipt["why"] == "answered 504 (deadline_exceeded)"


def fake_rapl(root: Path, uj: int, wrap: int = 1_000_000_000) -> Path:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(str(uj))
    (zone / "max_energy_range_uj").write_text(str(wrap))
    sub = root / "intel-rapl:0:0"  # a sub-zone (cores) is part of package 0: not added again
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("5")
    (sub / "max_energy_range_uj").write_text(str(wrap))
    return zone / "energy_uj"


def test_rapl_counters_are_read_when_present_and_charged_by_the_replicas_core_share(tmp_path):
    counter = fake_rapl(tmp_path, 999_000_000)
    meter = EnergyMeter(EnergyConfig(powercap_path=str(tmp_path)), 1, 4)
    assert meter.source == "rapl"
    token = meter.begin()
    counter.write_text("1000000")  # wrapped: 1,000,000 J range -> +2 J in all
    energy = meter.end(token)
    assert energy.joules == pytest.approx(2.0 / 4)
    assert energy.source == "rapl"


def test_without_rapl_energy_is_cpu_time_times_watts_per_core(tmp_path):
    meter = EnergyMeter(EnergyConfig(powercap_path=str(tmp_path), watts_per_core=20.0), 2, 4)
    assert meter.source == "estimate" and not RaplCounters(tmp_path)
    token = meter.begin()
    deadline = time.thread_time() + 0.02
    while time.thread_time() < deadline:  # burn 20 ms of this thread's CPU
        pass
    energy = meter.end(token)
    assert energy.cpu_s >= 0.04  # 2 cores' worth of the thread's time
    assert energy.joules == pytest.approx(energy.cpu_s * 20.0)


class FakeGpuEnergy:
    """NVML's counter as a cuda replica would read it: 1.5 J more at every read."""

    def __init__(self) -> None:
        self.mj = 10_000

    def read_mj(self) -> int:
        self.mj += 1_500
        return self.mj


def test_a_cuda_replica_adds_the_gpus_energy_counter(tmp_path, monkeypatch):
    monkeypatch.setattr("surge.observe.energy.GpuEnergy", FakeGpuEnergy)
    energy = EnergyConfig(powercap_path=str(tmp_path), watts_per_core=20.0)
    config = Config(observability={"energy": energy.model_dump(), "receipts": {"enabled": True}})
    watch = Observer(config, Metrics(), machine_cores=4).watch_for("digits", "1", shadow=False)
    assert watch is not None and watch.meter is not None

    cpu = watch.meter(RuntimeSettings(threads=2, device="cpu"))
    gpu = watch.meter(RuntimeSettings(threads=2, device="cuda"))
    assert (cpu.source, gpu.source) == ("estimate", "estimate+nvml")
    measured = gpu.end(gpu.begin())
    assert measured.source == "estimate+nvml"
    assert measured.joules == pytest.approx(measured.cpu_s * 20.0 + 1.5)


def test_a_full_buffer_drops_and_counts_instead_of_waiting(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"

    async def scenario() -> tuple[ReceiptLog, list[str], tuple[int, int]]:
        log = ReceiptLog(ReceiptsConfig(buffer=3), PRICES, CostLedger(PRICES), url)
        await log.start()  # the writer's own rounds run too: the test drives flushes as well
        try:
            for i in range(5):
                log.submit(finished_ctx(f"r{i}"))
            await log.flush()
            log.submit(finished_ctx("r5"))
            stored = [r["id"] for r in await log.search(ReceiptFilter())]
            return log, stored, log.counts()
        finally:
            await log.stop()

    log, stored, counts = asyncio.run(scenario())
    assert sorted(stored) == ["r0", "r1", "r2", "r5"]  # stored by the sink process
    assert counts == (4, 2)  # 4 stored, 2 dropped when the buffer was full
    assert [r["id"] for r in log.latest(2)] == ["r5", "r2"]


def test_a_sink_that_cannot_store_counts_the_loss(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"

    async def scenario() -> tuple[int, int]:
        log = ReceiptLog(ReceiptsConfig(), PRICES, CostLedger(PRICES), url)
        await log.start()
        (tmp_path / "r.db").unlink()  # the sink opens its own file: point it nowhere writable
        log.sink.url = f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x' / 'r.db'}"
        (tmp_path / "missing").write_text("a file where a directory should be")
        try:
            log.submit(finished_ctx("lost"))
            await log.flush(settle=True)
            return log.counts()
        finally:
            await log.stop()

    assert asyncio.run(scenario()) == (0, 1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'r.db'}", "unit_receipts")
    else:
        psycopg = pytest.importorskip("psycopg")
        try:
            with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
                conn.execute("DROP TABLE IF EXISTS unit_receipts_receipts")
        except psycopg.OperationalError as exc:
            pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
        opened = open_store(POSTGRES_URL, "unit_receipts")
    yield opened
    opened.close()


def test_the_store_filters_summarises_and_forgets_past_the_retention(store):
    receipts = []
    for i, (tenant, status, degraded) in enumerate(
        [("acme", 200, False), ("acme", 200, True), ("beta", 504, False), ("acme", 200, False)]
    ):
        ctx = finished_ctx("same-id" if i < 2 else f"r{i}", status)
        ctx.tenant, ctx.degraded, ctx.wall_time = tenant, degraded, 1000.0 + i
        ctx.runs.append(run("digits@1", "small", 1, 4, 0.002))
        receipts.append(record_of(ctx, PRICES))
    assert store.add_receipts(receipts) == 4
    assert len(store.receipts_for("same-id")) == 2  # a reused id keeps both, newest first
    assert store.receipts_for("same-id")[0]["degraded"] is True
    assert store.receipts_for("r3") == [receipts[3]]  # the record as it was stored
    pick = store.list_receipts
    assert [r["id"] for r in pick(ReceiptFilter(tenant="acme"))] == ["r3", "same-id", "same-id"]
    assert [r["id"] for r in pick(ReceiptFilter(status=504))] == ["r2"]
    assert [r["id"] for r in pick(ReceiptFilter(degraded=True))] == ["same-id"]
    assert [r["id"] for r in pick(ReceiptFilter(since=1002.0, until=1003.0))] == ["r2"]
    assert len(pick(ReceiptFilter(limit=2))) == 2
    totals = store.summarize_receipts(ReceiptFilter(tenant="acme"))
    assert totals["receipts"] == 3 and totals["degraded"] == 1
    assert totals["compute_s"] == pytest.approx(3 * 0.002)
    assert totals["cost"] == pytest.approx(3 * (0.002 * 2.0 * 1 + 0.01))
    assert store.delete_receipts_before(1002.0) == 2
    assert [r["id"] for r in pick(ReceiptFilter())] == ["r3", "r2"]


def test_the_sink_stores_batches_and_deletes_past_the_retention(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = open_store(url)
    sink = SinkClient(url)
    try:
        records = []
        for i in range(3):
            ctx = finished_ctx(f"r{i}")
            ctx.wall_time = 1000.0 + i
            records.append(record_of(ctx, PRICES))
        sink.send(records[:2])
        sink.send(records[2:])
        sink.delete_before(1001.5)  # the receipts of r0 and r1 are past the retention
        assert sink.wait_settled(30)
        assert (sink.written, sink.failed) == (3, 0)
        assert [r["id"] for r in store.list_receipts(ReceiptFilter())] == ["r2"]
    finally:
        sink.close()
        store.close()
