"""State a caller can make grow is bounded: tenant-labelled cost series, bandit segments
(here and in the shared copy), the pending-feedback buffer, and the human-review queue
(SQLite and the real PostgreSQL). Policies are driven with explicit clocks, no sleeps."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from surge.cluster.pending import PendingFeedback
from surge.config_routes import BanditConfig, RouteConfig
from surge.observe.cost import CostCollector, CostLedger
from surge.routing.bandit import MAX_SEGMENT_CHARS, ThompsonBandit, bandit_from_dict
from surge.serving.bandit_route import BanditRoute, merge_shared
from surge.serving.review_pruner import ReviewPruner
from tests.stores import fresh_store

ARMS = ("small", "large")

# -- tenant labels ---------------------------------------------------------------------------


def record(tenant: str | None) -> dict[str, Any]:
    run = {"endpoint": "digits", "version": "1", "rows": 1, "compute_s": 0.01,
           "cpu_s": 0.01, "cost": 0.5, "energy_j": 2.0}  # fmt: skip
    return {"tenant": tenant, "runs": [run]}


def test_made_up_tenants_share_one_series_and_configured_ones_keep_theirs():
    ledger = CostLedger({}, tenants={"acme"})
    ledger.add([record(f"made-up-{i}") for i in range(300)] + [record("acme"), record(None)])
    registry = CollectorRegistry()
    registry.register(CostCollector(ledger, {}, lambda: 0.0, lambda: (0, 0)))
    scraped = generate_latest(registry).decode()
    series = [line for line in scraped.splitlines() if 'tenant="' in line]
    assert len(series) == 3 * 4  # (acme, other, none) x (cost, energy, compute, cpu)
    assert "made-up" not in scraped
    assert 'surge_cost_total{endpoint="digits",tenant="other",version="1"} 150.0' in scraped
    assert 'surge_cost_total{endpoint="digits",tenant="acme",version="1"} 0.5' in scraped
    assert 'surge_cost_total{endpoint="digits",tenant="",version="1"} 0.5' in scraped
    assert len(ledger.totals) == 3  # memory too, not only the scrape


# -- bandit segments -----------------------------------------------------------------------


def teach(bandit: ThompsonBandit, segment: str, best: str, rounds: int = 20) -> None:
    for _ in range(rounds):
        for arm in ARMS:
            bandit.reward(arm, 1.0 if arm == best else 0.0, segment)


def test_segments_past_the_cap_evict_the_least_recently_used():
    b = ThompsonBandit(ARMS, random.Random(0), max_segments=3)
    for name in ("a", "b", "c"):
        teach(b, name, "large", rounds=1)
    b.choose("a")  # used: "b" is now the least recent
    teach(b, "d", "large", rounds=1)
    assert b.segments == ["", "c", "a", "d"] and b.evicted == 1
    for i in range(1000):
        teach(b, f"flood-{i}", "small", rounds=1)
    assert len(b.segments) == 4 and b.evicted == 1001
    assert len(b.to_dict()["segments"]) == 4


def test_segments_without_counts_of_their_own_are_served_by_the_default_which_learns_from_all():
    b = ThompsonBandit(ARMS, random.Random(0), max_segments=2)
    teach(b, "tenant-a", "large", rounds=50)
    assert b.stats()["large"]["pulls"] == 50  # the default learned from tenant-a's rewards
    # 10,000 made-up segments that never earn a reward take no room ...
    picks = [b.choose(f"made-up-{i}") for i in range(10_000)]
    assert b.segments == ["", "tenant-a"]
    # ... and are answered as the default segment learned: the best arm overall
    assert picks.count("large") > 9_500
    # a segment evicted goes back to the default's counts
    teach(b, "tenant-b", "small", rounds=50)
    teach(b, "tenant-c", "small", rounds=50)
    assert "tenant-a" not in b.segments
    assert b.stats("tenant-a")["large"]["pulls"] == 0
    # a key too long to be a segment never gets counts of its own
    teach(b, "x" * (MAX_SEGMENT_CHARS + 1), "small", rounds=1)
    assert "x" * (MAX_SEGMENT_CHARS + 1) not in b.segments


def test_no_segments_at_all_when_the_cap_is_zero():
    b = ThompsonBandit(ARMS, random.Random(0), max_segments=0)
    teach(b, "tenant-a", "large", rounds=5)
    b.choose("tenant-a")
    assert b.segments == [""] and b.stats()["large"]["pulls"] == 5


def test_what_a_process_hands_over_to_share_is_bounded_and_not_lost_when_sharing_fails():
    b = ThompsonBandit(ARMS, random.Random(0), max_segments=5)
    for i in range(2000):
        teach(b, f"t{i}", "large", rounds=1)
    taken = b.take_learned()
    assert len(taken["segments"]) == 6  # the default and the five segments still kept
    assert sum(c["pulls"] for c in taken["segments"][""].values()) == 4000
    b.give_back(taken)  # the registry did not answer: shared next time instead
    again = b.take_learned()
    assert again["segments"] == taken["segments"]


def test_the_shared_copy_keeps_the_segments_most_recently_learned_from():
    def delta(*segments: str) -> dict[str, Any]:
        b = ThompsonBandit(ARMS, random.Random(0))
        for s in segments:
            teach(b, s, "large", rounds=1)
        return b.take_learned()

    shared = None
    for i in range(50):  # fifty processes' syncs, each with a new segment
        shared = merge_shared(shared, delta(f"old-{i}"), max_segments=3)
    shared = merge_shared(shared, delta("old-10"), max_segments=3)  # learned from again
    assert shared is not None
    assert set(shared["segments"]) == {"", "old-48", "old-49", "old-10"}
    assert set(shared["seen"]) == {"old-48", "old-49", "old-10"}
    assert sum(c["pulls"] for c in shared["segments"][""].values()) == 51 * 2
    restored = bandit_from_dict(shared, random.Random(0), max_segments=2)
    assert restored.segments == ["", "old-49", "old-10"]  # the most recent, least first


class SlowStore:
    """`update_state` in memory; while it runs, the route keeps answering (see below)."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None
        self.during: Any = None
        self.fail = False

    def update_state(self, key: str, change: Any, *, now: float) -> dict[str, Any]:
        if self.during is not None:
            self.during()
        if self.fail:
            raise ConnectionError("registry down")
        self.doc = change(self.doc)
        return self.doc

    def shared_secret(self, name: str, make: Any, now: float) -> str:
        return "secret"


class Arm:
    def __init__(self, name: str) -> None:
        self.name = name
        self.accepting = True


def test_a_sync_shares_a_bounded_copy_and_keeps_what_was_learned_meanwhile():
    store = SlowStore()
    config = BanditConfig(arms=list(ARMS), segment_header="x-tenant", max_segments=10)
    route = BanditRoute("r", config, [Arm(a) for a in ARMS], store, lambda *a: None)  # type: ignore[arg-type]
    for i in range(500):
        route.reward(f"req-{i}", f"t{i}", "large", 1.0)
    # learned on the loop while the registry write is under way: kept, and shared next time
    store.during = lambda: route.reward("late", "t499", "small", 1.0)
    asyncio.run(route.sync())
    assert store.doc is not None and len(store.doc["segments"]) == 11
    assert route.bandit.stats("t499")["small"]["pulls"] == 1
    store.during = None
    asyncio.run(route.sync())
    assert store.doc["segments"]["t499"]["small"]["pulls"] == 1
    assert sum(c["pulls"] for c in store.doc["segments"][""].values()) == 501
    # a failed sync loses nothing
    route.reward("x", "t1", "large", 1.0)
    store.fail = True
    with pytest.raises(ConnectionError):
        asyncio.run(route.sync())
    store.fail = False
    asyncio.run(route.sync())
    assert sum(c["pulls"] for c in store.doc["segments"][""].values()) == 502


# -- pending feedback ------------------------------------------------------------------------


class Shared:
    def __init__(self) -> None:
        self.up = True
        self.stored: dict[str, Any] = {}

    async def put(self, entries: list[tuple[str, Any]], ttl_s: float) -> None:
        if not self.up:
            raise ConnectionError("down")
        self.stored.update(entries)

    async def take(self, request_id: str, check: Any) -> Any:
        return self.stored.pop(request_id, None)


def test_the_pending_buffer_is_bounded_oldest_first_and_counts_what_it_forgot():
    async def main() -> None:
        shared = Shared()
        pending = PendingFeedback(shared, ttl_s=60, max_unsent=5)
        for i in range(8):
            pending.remember(f"r{i}", "route", "", "a", None)
        assert pending.evicted == 3
        assert await pending.take("r0", wait_s=0) is None
        assert await pending.take("r7", wait_s=0) == ("route", "", "a", None)
        # the shared store is down: what could not be sent goes back, still bounded
        shared.up = False
        for _ in range(3):
            await pending.flush()
            for i in range(4):
                pending.remember(f"late-{_}-{i}", "route", "", "a", None)
        assert len(pending._unsent) == 5
        await pending.flush()
        assert len(pending._unsent) == 5 and pending.evicted == 3 + 3 + 4 + 4
        shared.up = True
        assert await pending.flush() == 5
        # the newest answers were kept
        assert set(shared.stored) == {"late-1-3", *(f"late-2-{i}" for i in range(4))}

    asyncio.run(main())


# -- the review queue ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    with fresh_store(request.param, tmp_path, "bs") as opened:
        yield opened


def add(store: Any, now: float, endpoint: str = "cascade") -> int:
    fields = {"inputs": {"x": [now]}, "answer": {"label": 1}, "confidence": 0.4}
    item = store.add_review(
        endpoint=endpoint, request_id=f"req-{now}", served_by="big@1", now=now, **fields
    )
    return item.id


def test_old_unlabelled_reviews_expire_and_labelled_ones_outlive_the_retention(store):
    old, labelled, fresh = add(store, 10.0), add(store, 20.0), add(store, 900.0)
    add(store, 5.0, endpoint="another")
    store.label_review(labelled, 3, actor="ann", now=30.0)
    removed = store.prune_reviews(endpoint="cascade", unlabelled_before=500.0,
                                  max_unlabelled=100, max_labelled=100)  # fmt: skip
    assert removed == {"expired": 1, "unlabelled_over_cap": 0, "labelled_over_cap": 0}
    left = [r.id for r in store.list_reviews(endpoint="cascade", pending=None)]
    assert left == [fresh, labelled] and old not in left
    assert store.count_reviews("another") == {"pending": 1, "labelled": 0}  # its own rules


def test_a_flood_of_unlabelled_reviews_keeps_the_newest_and_never_pushes_out_labelled_ones(store):
    labelled = [add(store, float(t)) for t in range(3)]
    for i, item in enumerate(labelled):
        store.label_review(item, i, actor="ann", now=100.0 + i)
    flood = [add(store, 200.0 + t) for t in range(30)]
    removed = store.prune_reviews(endpoint="cascade", unlabelled_before=0.0,
                                  max_unlabelled=10, max_labelled=2)  # fmt: skip
    assert removed == {"expired": 0, "unlabelled_over_cap": 20, "labelled_over_cap": 1}
    assert [r.id for r in store.list_reviews()] == flood[-10:]
    # the two most recently labelled stay (the first label went)
    assert [r.id for r in store.labelled_feedback()] == labelled[:0:-1]


def test_the_pruner_applies_each_cascades_retention_in_the_background_and_only_when_leading(
    store,
):
    routes = {
        "cascade": RouteConfig.model_validate({"cascade": {
            "tiers": [{"target": "small", "threshold": 0.9}],
            "review_retention_s": 100, "review_max_pending": 2}}),
        "quiet": RouteConfig.model_validate({"cascade": {
            "tiers": [{"target": "small", "threshold": 0.9}], "review": False}}),
        "learner": RouteConfig.model_validate({"bandit": {"arms": ["a", "b"]}}),
    }  # fmt: skip
    leading = [False]
    pruner = ReviewPruner.for_routes(
        routes, store, leading=lambda: leading[0], clock=lambda: 1000.0
    )
    assert list(pruner.queues) == ["cascade"]
    kept = [add(store, t) for t in (850.0, 950.0, 960.0, 970.0)]
    assert asyncio.run(pruner.prune()) == 0  # another process leads
    leading[0] = True
    assert asyncio.run(pruner.prune()) == 2  # 850 too old; 950 past the cap of two
    assert [r.id for r in store.list_reviews()] == kept[2:]

    async def in_the_background() -> None:  # started and stopped with the server
        pruner.start()
        await pruner.stop()

    asyncio.run(in_the_background())
