"""What a rate-limit decision tells the client: the `RateLimit-Policy` and `RateLimit`
fields of the IETF draft "RateLimit header fields for HTTP"
(draft-ietf-httpapi-ratelimit-headers-10 and -11), `Retry-After` on a refusal,
and the `SurgeError` of a refusal carrying them.

Both fields are Structured Field lists (RFC 9651), one member per limit the request
was checked against, named by a string (the limit's bucket, "key:ab12cd:requests"):

    RateLimit-Policy: "key:ab12cd:requests";q=100;w=1;surge-burst=5
    RateLimit: "key:ab12cd:requests";r=4;t=1

`q` is the quota per window `w` (whole seconds: the draft has no fractions), `r` the
units that could go now and `t` the whole seconds until the bucket is full again. A
GCRA limit has no fixed window, so the policy states its average rate over the
shortest whole-second window that holds at least one unit (rounded down, so a client
pacing itself by it is never refused for the rounding); how much may go back to back is
the vendor parameter `surge-burst`, which the draft allows for such extras. A rows
limit says so with `qu="rows"` (the draft's default unit is the request). On a refusal
the refusing limit's `t` is the same instant as `Retry-After`, as the draft asks.

    headers = ratelimit_headers(decision)        # on every response that was checked
    raise rate_limited_error(decision)          # when not decision.allowed
"""

from __future__ import annotations

import math
from functools import lru_cache

from surge.core.errors import SurgeError
from surge.security.rate_limit import Limit, RateDecision, Standing


def sf_string(value: str) -> str:
    """A Structured Field string: quotes and backslashes escaped, and what the syntax
    cannot carry (non-ASCII, control characters) replaced rather than sent malformed."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in value)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_window(limit: Limit) -> tuple[int, int]:
    """(q, w): the limit's rate as a whole quota per whole-second window."""
    window = 1 if limit.rate_per_s >= 1 else math.ceil(1 / limit.rate_per_s)
    return max(1, math.floor(limit.rate_per_s * window + 1e-9)), window


def _whole_seconds(seconds: float) -> int:
    # 1e-9: a time computed as 2.0000000001 s is 2 s, not 3.
    return max(0, math.ceil(seconds - 1e-9))


# On the hot path (every checked answer carries them): a limit's parts of the two fields
# are the same every time, so they are made once per limit.
@lru_cache(maxsize=65_536)
def _policy_member(limit: Limit) -> str:
    quota, window = policy_window(limit)
    unit = f';qu="{limit.unit}"' if limit.unit != "requests" else ""
    return f"{sf_string(limit.bucket)};q={quota};w={window}{unit};surge-burst={limit.capacity}"


@lru_cache(maxsize=65_536)
def _state_name(limit: Limit) -> str:
    return sf_string(limit.bucket) + ";r="


def _state_member(standing: Standing) -> str:
    wait = standing.retry_after_s
    until = wait if 0 < wait < math.inf else standing.reset_s
    return f"{_state_name(standing.limit)}{standing.remaining};t={_whole_seconds(until)}"


def retry_after_header(seconds: float) -> str:
    """`Retry-After` in whole seconds, rounded up and at least 1 (0 invites a hot loop)."""
    return str(max(1, _whole_seconds(seconds)))


def ratelimit_headers(decision: RateDecision) -> dict[str, str]:
    """The response headers for a checked request (empty when nothing limited it)."""
    if not decision.standings:
        return {}
    headers = {
        "RateLimit-Policy": ", ".join(_policy_member(s.limit) for s in decision.standings),
        "RateLimit": ", ".join(_state_member(s) for s in decision.standings),
    }
    if not decision.allowed and decision.retry_after_s < math.inf:
        headers["Retry-After"] = retry_after_header(decision.retry_after_s)
    return headers


def _who(limit: Limit) -> str:
    kind, _, ident = limit.name.partition(":")
    return f"{kind} {ident}" if ident else limit.name


def rate_limited_error(decision: RateDecision) -> SurgeError:
    """The refusal of a request `decision` did not allow: 429 with the wait, or 413 when
    the request alone is larger than a limit's burst (waiting would never help)."""
    limit = decision.limit
    if decision.allowed or limit is None:
        raise ValueError("rate_limited_error needs a refusal")
    headers = ratelimit_headers(decision)
    rate = f"{limit.rate_per_s:g} {limit.unit}/s (burst {limit.capacity})"
    if decision.retry_after_s == math.inf:
        cost = next(s.cost for s in decision.standings if s.limit == limit)
        return SurgeError(
            "rate_limit_exceeds_burst",
            f"a request of {cost:g} {limit.unit} is more than {_who(limit)} may send at once "
            f"under its rate limit of {rate}; send at most {limit.capacity} {limit.unit} "
            "per request",
            413,
            headers=headers,
        )
    wait = max(1, _whole_seconds(decision.retry_after_s))
    return SurgeError(
        "rate_limited",
        f"{_who(limit)} is over its rate limit of {rate}; retry in {wait} s",
        429,
        retry_after_s=decision.retry_after_s,
        headers=headers,
    )
