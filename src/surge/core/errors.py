"""One error type for the whole platform; adapters render it in their protocol's shape."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SurgeError(Exception):
    """A failure the client can act on.

    `code` is a stable machine-readable name (also the `reason` label of the
    rejection metrics), `status` the HTTP status, and `retry_after_s` — when
    set — becomes a `Retry-After` header (whole seconds, rounded up). `headers` are
    further response headers the refusal must carry (a rate limit's `RateLimit` and
    `RateLimit-Policy`), which the adapter adds as they are.
    """

    code: str
    message: str
    status: int = 400
    retry_after_s: float | None = None
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return self.message


def bad_input(message: str) -> SurgeError:
    return SurgeError("invalid_input", message, 400)


def not_found(message: str) -> SurgeError:
    return SurgeError("not_found", message, 404)
