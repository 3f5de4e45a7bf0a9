"""GCRA rate limits on an explicit clock: exact admitted counts, all-or-nothing over a
request's limits, rows as cost, a bounded set of buckets, and the headers a client reads."""

from __future__ import annotations

import math
import re

import pytest

from surge.config_security import RateLimitConfig
from surge.security.rate_limit import (
    Limit,
    LocalLimiter,
    default_burst,
    limits_from_config,
    priced,
)
from surge.security.ratelimit_headers import (
    rate_limited_error,
    ratelimit_headers,
    retry_after_header,
)

KEY = Limit("key:ab12cd", 100.0, 5)


def admitted(limiter: LocalLimiter, limits: list[tuple[Limit, float]], times) -> int:
    return sum(limiter.check(limits, now).allowed for now in times)


@pytest.mark.parametrize("epoch", [0.0, 1_750_000_000.0])  # a monotonic and a unix clock
def test_three_times_the_rate_for_ten_seconds_admits_exactly_rate_times_time_plus_burst(epoch):
    limiter = LocalLimiter()
    offered = [epoch + k / 300 for k in range(3001)]  # 300/s from 0 s to 10 s inclusive
    assert admitted(limiter, [(KEY, 1)], offered) == 100 * 10 + 5


def test_after_a_quiet_spell_the_burst_goes_back_to_back_then_the_rate_paces():
    limiter = LocalLimiter()
    burst = [limiter.check([(KEY, 1)], 50.0) for _ in range(6)]
    assert [d.allowed for d in burst] == [True] * 5 + [False]
    assert [d.remaining for d in burst[:5]] == [4, 3, 2, 1, 0]
    refused = burst[5]
    assert refused.retry_after_s == pytest.approx(0.01)
    assert refused.reset_s == pytest.approx(0.05)  # five units to earn back
    assert not limiter.check([(KEY, 1)], 50.0099).allowed
    assert limiter.check([(KEY, 1)], 50.01).allowed
    assert limiter.check([(KEY, 1)], 60.0).remaining == 4  # full again after idling


def test_a_request_consumes_from_every_limit_only_when_all_allow_it():
    tenant = Limit("tenant:acme", 100.0, 3)
    key_a, key_b = Limit("key:aaaa", 1.0, 2), Limit("key:bbbb", 1.0, 5)
    limiter = LocalLimiter()
    first = [limiter.check([(key_a, 1), (tenant, 1)], 0.0) for _ in range(4)]
    assert [d.allowed for d in first] == [True, True, False, False]
    assert first[2].limit == key_a and first[2].retry_after_s == pytest.approx(1.0)
    # key_a's refusals left the tenant's third unit for key_b, and no more.
    second = [limiter.check([(key_b, 1), (tenant, 1)], 0.0) for _ in range(2)]
    assert [d.allowed for d in second] == [True, False]
    assert second[1].limit == tenant and second[1].retry_after_s == pytest.approx(0.01)
    # key_b was not charged for its refusal: it still has 4 of its 5.
    assert limiter.check([(key_b, 1)], 0.0).remaining == 3


def test_a_refusal_names_the_limit_that_makes_the_request_wait_longest():
    fast, slow = Limit("key:k", 10.0, 1), Limit("tenant:t", 2.0, 1)
    limiter = LocalLimiter()
    assert limiter.check([(fast, 1), (slow, 1)], 0.0).allowed
    refused = limiter.check([(fast, 1), (slow, 1)], 0.05)
    assert not refused.allowed and refused.limit == slow
    assert refused.retry_after_s == pytest.approx(0.45)
    waits = {s.limit.name: s.retry_after_s for s in refused.standings}
    assert waits == pytest.approx({"key:k": 0.05, "tenant:t": 0.45})


def test_rows_cost_their_number_and_a_batch_larger_than_the_burst_never_fits():
    limits = limits_from_config(RateLimitConfig(requests_per_s=100, rows_per_s=1000), "key:k")
    rows = next(limit for limit in limits if limit.unit == "rows")
    assert rows.capacity == 50
    limiter = LocalLimiter()
    assert limiter.check(priced(limits, rows=30), 0.0).allowed
    refused = limiter.check(priced(limits, rows=30), 0.0)
    assert not refused.allowed and refused.limit == rows
    assert refused.remaining == 20 and refused.retry_after_s == pytest.approx(0.01)
    assert limiter.check(priced(limits, rows=20), 0.0).allowed
    too_big = limiter.check(priced(limits, rows=51), 100.0)
    assert not too_big.allowed and too_big.retry_after_s == math.inf
    error = rate_limited_error(too_big)
    assert error.status == 413 and error.code == "rate_limit_exceeds_burst"
    assert "send at most 50 rows per request" in error.message
    assert error.retry_after_s is None and "Retry-After" not in (error.headers or {})


def test_the_default_burst_is_five_percent_of_a_seconds_worth_and_at_least_one():
    assert [default_burst(r) for r in (100, 1000, 10, 0.5, 30)] == [5, 50, 1, 1, 2]
    assert Limit("k", 100.0).burst == 5
    explicit = limits_from_config(RateLimitConfig(requests_per_s=100, requests_burst=20), "k")
    assert [(x.unit, x.capacity) for x in explicit] == [("requests", 20)]
    assert limits_from_config(RateLimitConfig(), "k") == []
    assert priced([KEY], rows=7) == [(KEY, 1)]


def test_the_tracked_buckets_stay_bounded_and_an_idle_bucket_evicted_is_simply_full():
    limiter = LocalLimiter(max_keys=3)
    keys = [Limit(f"key:{i}", 1.0, 2) for i in range(4)]
    for i, key in enumerate(keys):
        limiter.check([(key, 2)], float(10 * i))  # each empties its bucket, 10 s apart
    assert len(limiter) == 3
    assert limiter.early_evictions == 0  # key 0 had refilled (2 s) before it went
    # key 0 comes back with its full burst, as it would have had it been kept.
    assert limiter.check([(keys[0], 2)], 40.0).allowed
    # Four names active within one refill time: an eviction now forgives a debt.
    busy = LocalLimiter(max_keys=3)
    for key in keys:
        busy.check([(key, 2)], 0.0)
    assert len(busy) == 3 and busy.early_evictions == 1


def test_a_limit_given_twice_in_one_check_is_a_caller_bug():
    with pytest.raises(ValueError, match="twice"):
        LocalLimiter().check([(KEY, 1), (KEY, 1)], 0.0)


# RFC 9651 list members: a string item with parameters (key=integer or key=string).
SF_PARAM = r';[a-z*][a-z0-9_\-.*]*=(?:-?\d{1,15}|"(?:[^"\\]|\\["\\])*")'
SF_MEMBER = re.compile(rf'"(?:[^"\\]|\\["\\])*"(?:{SF_PARAM})*')


def sf_list(value: str) -> list[str]:
    members = re.split(r",[ \t]*", value)
    for member in members:
        assert SF_MEMBER.fullmatch(member), f"{member!r} is not a structured field item"
    return members


def test_headers_follow_the_ratelimit_draft_syntax_and_a_refusal_adds_retry_after():
    rows = Limit("tenant:acme", 0.5, 1, "rows")
    limiter = LocalLimiter()
    ok = limiter.check([(KEY, 1), (rows, 1)], 0.0)
    headers = ratelimit_headers(ok)
    assert headers == {
        "RateLimit-Policy": '"key:ab12cd:requests";q=100;w=1;surge-burst=5, '
        '"tenant:acme:rows";q=1;w=2;qu="rows";surge-burst=1',
        "RateLimit": '"key:ab12cd:requests";r=4;t=1, "tenant:acme:rows";r=0;t=2',
    }
    assert all(sf_list(v) for v in headers.values())
    refused = limiter.check([(KEY, 1), (rows, 1)], 0.5)
    headers = ratelimit_headers(refused)
    assert headers["Retry-After"] == "2"  # 1.5 s, rounded up
    # The refusing limit's reset names the same instant as Retry-After.
    assert headers["RateLimit"].endswith('"tenant:acme:rows";r=0;t=2')
    assert all(sf_list(v) for k, v in headers.items() if k != "Retry-After")
    assert retry_after_header(0.001) == "1" and retry_after_header(3.0) == "3"


def test_a_name_the_syntax_cannot_carry_is_escaped_not_sent_malformed():
    odd = Limit('tenant:a"b\\c\u00e9', 10.0)
    headers = ratelimit_headers(LocalLimiter().check([(odd, 1)], 0.0))
    assert headers["RateLimit"].startswith('"tenant:a\\"b\\\\c?:requests";')
    assert all(sf_list(v) for v in headers.values())


def test_a_refusal_is_a_429_saying_which_limit_its_rate_and_when_to_retry():
    limiter = LocalLimiter()
    for _ in range(5):
        limiter.check([(KEY, 1)], 0.0)
    error = rate_limited_error(limiter.check([(KEY, 1)], 0.0))
    assert (error.code, error.status) == ("rate_limited", 429)
    assert error.message == (
        "key ab12cd is over its rate limit of 100 requests/s (burst 5); retry in 1 s"
    )
    assert error.retry_after_s == pytest.approx(0.01)
    assert error.headers is not None and error.headers["Retry-After"] == "1"
    with pytest.raises(ValueError):
        rate_limited_error(LocalLimiter().check([(KEY, 1)], 0.0))
