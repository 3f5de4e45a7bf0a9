"""An endpoint's route as the registry stores it: the doc every process serves
(`reconcile.py`), and how each rollout operation turns one doc into the next.

These are pure functions of the doc the change replaces, so an operation computed
inside the registry's transaction (`update_route`) acts on the latest route whichever
process makes it, and two processes changing one route take turns instead of one
undoing the other.
"""

from __future__ import annotations

from typing import Any

from surge.core.errors import SurgeError
from surge.routing.rollout import RolloutController, RolloutPolicy

Doc = dict[str, Any]

# The controller's times in a doc are unix seconds (every host reads the same clock);
# a doc written by a release that stored monotonic seconds lacks this mark.
CLOCK = "unix"


def configured(config_ref: dict[str, str], previous: Doc | None) -> Doc:
    """Serving the version the config names, and nothing else."""
    return {
        "stable": dict(config_ref),
        "candidate": None,
        "mode": "single",
        "percent": 0.0,
        "ab_key": (previous or {}).get("ab_key"),
        "rollout": None,
        "config_version": dict(config_ref),
    }


def still_current(doc: Doc | None, config_ref: dict[str, str]) -> Doc | None:
    """The registry's route, unless the config has named another version since it was
    written: a changed config is the operator's newer intent."""
    if doc is None or doc.get("config_version") != config_ref:
        return None
    return doc


def single(before: Doc, stable: dict[str, str]) -> Doc:
    return {**before, "stable": dict(stable), "candidate": None, "mode": "single",
            "percent": 0.0, "rollout": None}  # fmt: skip


def with_candidate(
    before: Doc, candidate: dict[str, str], mode: str, percent: float, **extra: Any
) -> Doc:
    return {**before, "candidate": dict(candidate), "mode": mode, "percent": float(percent),
            **extra}  # fmt: skip


def require_no_rollout(name: str, before: Doc | None, version: str) -> Doc:
    """The doc a deploy replaces, or the 409 that says why there can be no deploy now."""
    if before is None:
        raise SurgeError("endpoint_not_found", f"{name} has no route in the registry", 404)
    candidate = before.get("candidate")
    if candidate is not None:
        raise SurgeError(
            "rollout_in_progress",
            f"{name} is already running a {before.get('mode')} of "
            f"{candidate.get('model')}@{candidate.get('version')}; promote or roll it back first",
            409,
        )
    stable = before.get("stable") or {}
    if stable.get("version") == version:
        # Versions are addressed by number alone (/v2/models/{m}/versions/{v}).
        raise SurgeError(
            "already_serving",
            f"{name} already serves version {version!r} "
            f"({stable.get('model')}@{version}); deploy another version number",
            409,
        )
    return before


def require_candidate(name: str, before: Doc | None, event: str) -> dict[str, str]:
    candidate = (before or {}).get("candidate")
    if candidate is None:
        raise SurgeError("no_rollout", f"{name} has no candidate to {event}", 409)
    return candidate


def controller_of(doc: Doc, policy: RolloutPolicy, now: float) -> RolloutController | None:
    """The rollout controller the doc records, at its recorded step."""
    saved = doc.get("rollout")
    if not saved or doc.get("mode") not in ("canary", "shadow"):
        return None
    controller = RolloutController.from_dict(policy, saved)
    if saved.get("clock") != CLOCK:
        controller.step_started_at = now  # another clock: the step's time restarts
    return controller


def rollout_state(controller: RolloutController) -> dict[str, Any]:
    return {**controller.to_dict(), "clock": CLOCK}
