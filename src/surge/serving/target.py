"""A target: what a public name serves, an endpoint or a route, behind one call.

Protocol adapters hold a `Target` and never ask which kind it is: they ask it what it
takes (`interface`), then call `infer(ctx, tensors, hints)`. A route hands the same
`Hints` on to whatever it calls, so an A/B endpoint behind a cascade still splits by
the user key, and a rules route nested in a fallback still sees the headers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from surge.core.errors import SurgeError, bad_input
from surge.core.tensors import Tensors
from surge.routing.rules import RequestFacts

if TYPE_CHECKING:
    from surge.serving.deployment import Deployment

DEFAULT_PRIORITY = 1  # best-effort traffic sends X-Priority: 0 and is shed first
# Headers whose value authentication decides (the tenant and priority) or hides (the key).
DECIDED = frozenset({b"x-tenant", b"x-priority", b"authorization", b"x-api-key"})


@dataclass(slots=True, eq=False)
class Served:
    """A target's answer and the deployment that computed it (built per request)."""

    outputs: Tensors
    deployment: Deployment


@dataclass(slots=True, eq=False)
class Hints:
    """What a target may want to know about the request besides its tensors.

    Built once per request by the adapter from what it already has (the raw header list,
    the protocol's parameters); the facts a rules or bandit route reads are gathered
    only when one asks, so a plain endpoint pays for none of it.
    """

    raw_headers: Sequence[tuple[bytes, bytes]] = ()  # the ASGI scope's headers, as sent
    parameters: Mapping[str, Any] | None = None  # v2 `parameters`; OpenAI `user`
    body_bytes: int = 0
    version: str | None = None  # a pinned version (v2 `/versions/{v}`): endpoints only
    # The headers collected on arrival, after authentication decided the request's
    # tenant and priority and took its key out (security/auth.py): what `DECIDED`
    # headers say is read from here, never from what the client sent.
    decided: Mapping[bytes, str] | None = None
    _facts: RequestFacts | None = None

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower().encode("latin-1")
        if self.decided is not None and wanted in DECIDED:
            return self.decided.get(wanted)
        for key, value in self.raw_headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def user_key(self, ab_key: str) -> str | None:
        """The key a sticky A/B split assigns by: `header:<name>` or `parameter:<name>`."""
        source, _, name = ab_key.partition(":")
        if source == "header":
            return self.header(name)
        value = (self.parameters or {}).get(name)
        return None if value is None else str(value)

    def facts(self, rows: int) -> RequestFacts:
        """What rules and bandit routes look at; gathered on first use, then kept."""
        if self._facts is None or self._facts.input_rows != rows:
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw_headers
            }
            if self.decided is not None:
                for name in DECIDED:
                    text = name.decode("latin-1")
                    headers.pop(text, None)
                    if name in self.decided:
                        headers[text] = self.decided[name]
            self._facts = RequestFacts(
                headers=headers,
                tenant=headers.get("x-tenant"),
                priority=parse_priority(headers.get("x-priority")),
                input_rows=rows,
                input_bytes=self.body_bytes,
                params=dict(self.parameters or {}),
            )
        return self._facts


def parse_priority(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PRIORITY
    try:
        return int(raw)
    except ValueError:
        raise bad_input(f"X-Priority must be a whole number, got {raw!r}") from None


def rows_of(tensors: Tensors) -> int:
    """Rows in a request's tensors (every input has the same first dimension)."""
    for value in tensors.values():
        return len(value)
    return 0


class Target(Protocol):
    name: str

    @property
    def accepting(self) -> bool: ...

    @property
    def versions(self) -> list[str]:
        """The versions serving now (an endpoint's; a route has none of its own)."""
        ...

    def interface(self, version: str | None = None) -> Deployment:
        """The deployment that describes what this target takes and returns: an
        endpoint's stable (or pinned) version, a route's first target's."""
        ...

    def refuse_early(self, ctx: Any, version: str | None = None) -> None:
        """Raise the refusal a request would get whatever its size, before its body is
        read (an endpoint's admission); return when it may go on."""
        ...

    async def infer(self, ctx: Any, tensors: Tensors, hints: Hints) -> Served: ...


class RouteBase:
    """What every route shares: it has no versions of its own, and what it takes is
    what its first target takes."""

    name: str

    @property
    def first(self) -> Target:
        """The target whose inputs and outputs describe the route's."""
        raise TypeError(f"{type(self).__name__} must say which target describes it")

    @property
    def versions(self) -> list[str]:
        return []

    def refuse_early(self, ctx: Any, version: str | None = None) -> None:
        """A route may send the request to a target that can still take it (a ladder's
        faster rung, a fallback): nothing is refused before it decides."""

    def interface(self, version: str | None = None) -> Deployment:
        if version:
            raise SurgeError(
                "version_not_found", f"{self.name!r} is a route: it has no versions to pin", 404
            )
        return self.first.interface()
