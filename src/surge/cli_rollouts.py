"""`surge deploy | promote | rollback | status | history | mode`: the CLI face of the admin API.

Each command is one HTTP call to a running server's /admin routes, with the admin
key from `--admin-key` or SURGE_ADMIN_KEY; what it prints is what the API answered.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from surge.config import admin_key_from_env


def common(parser: argparse.ArgumentParser) -> None:
    """The options of every command that calls a running server's admin API."""
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
    parser.add_argument(
        "--admin-key",
        help="admin key (default: SURGE_ADMIN_KEY, which is better: a flag shows in ps)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")


def add_commands(sub: argparse._SubParsersAction) -> None:
    deploy = sub.add_parser("deploy", help="deploy a model version to an endpoint")
    deploy.add_argument("endpoint")
    deploy.add_argument("model")
    deploy.add_argument("version")
    how = deploy.add_mutually_exclusive_group()
    how.add_argument("--canary", metavar="PERCENT", help="start a canary at this share, e.g. 5%%")
    how.add_argument("--shadow", action="store_true", help="mirror live traffic to it")
    how.add_argument(
        "--ab",
        nargs="?",
        const="",
        metavar="KEY",
        help="sticky A/B split by a user key: a header name, header:<name> or parameter:<name> "
        "(default: the endpoint's ab_key)",
    )
    deploy.add_argument("--weight", metavar="PERCENT", help="--ab: the new version's share")
    common(deploy)
    deploy.set_defaults(func=cmd_deploy)
    for name, helptext in (("promote", "promote the candidate"), ("rollback", "roll back")):
        op = sub.add_parser(name, help=helptext)
        op.add_argument("endpoint")
        op.add_argument("--reason", default="operator")
        common(op)
        op.set_defaults(func=cmd_operation, operation=name)
    status = sub.add_parser("status", help="versions, traffic, metrics and rollout step")
    status.add_argument("endpoint")
    common(status)
    status.set_defaults(func=cmd_status)
    history = sub.add_parser("history", help="the audit log of changes")
    history.add_argument("endpoint", nargs="?")
    history.add_argument("--limit", type=int, default=20)
    common(history)
    history.set_defaults(func=cmd_history)
    mode = sub.add_parser("mode", help="show the burst mode, force one, or release it")
    mode.add_argument("mode", nargs="?", help="normal | surge | emergency: force it")
    mode.add_argument("--release", action="store_true", help="back to automatic")
    mode.add_argument("--reason", default="operator")
    common(mode)
    mode.set_defaults(func=cmd_mode)


def _percent(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw.rstrip("%"))
    except ValueError:
        raise SystemExit(f"expected a percentage like 5%, got {raw!r}") from None


def _call(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> Any:
    import httpx

    key = args.admin_key or admin_key_from_env()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(
            method, f"{args.url.rstrip('/')}{path}", json=body, headers=headers, timeout=300
        )
    except httpx.HTTPError as exc:
        raise SystemExit(f"cannot reach {args.url}: {exc}") from None
    doc = response.json() if response.content else {}
    if response.status_code >= 400:
        error = doc.get("error", {}) if isinstance(doc, dict) else {}
        message = error.get("message", response.text) if isinstance(error, dict) else error
        raise SystemExit(f"error {response.status_code}: {message}")
    return doc


def _print(args: argparse.Namespace, doc: Any, render: Any) -> int:
    if args.json:
        import json

        print(json.dumps(doc, indent=2))
    else:
        render(doc)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": args.model, "version": args.version, "mode": "swap"}
    if args.canary is not None:
        body.update(mode="canary", percent=_percent(args.canary))
    elif args.shadow:
        body["mode"] = "shadow"
    elif args.ab is not None:
        body.update(mode="ab", percent=_percent(args.weight) or 50.0)
        if args.ab:
            body["ab_key"] = args.ab if ":" in args.ab else f"header:{args.ab}"
    return _print(
        args, _call(args, "POST", f"/admin/endpoints/{args.endpoint}/deploy", body), render_status
    )


def cmd_operation(args: argparse.Namespace) -> int:
    path = f"/admin/endpoints/{args.endpoint}/{args.operation}"
    return _print(args, _call(args, "POST", path, {"reason": args.reason}), render_status)


def cmd_status(args: argparse.Namespace) -> int:
    return _print(args, _call(args, "GET", f"/admin/endpoints/{args.endpoint}"), render_status)


def cmd_history(args: argparse.Namespace) -> int:
    query = f"?limit={args.limit}" + (f"&endpoint={args.endpoint}" if args.endpoint else "")
    return _print(args, _call(args, "GET", f"/admin/history{query}"), render_history)


def cmd_mode(args: argparse.Namespace) -> int:
    if args.release:
        doc = _call(args, "DELETE", "/admin/mode", {"reason": args.reason})
    elif args.mode:
        doc = _call(args, "POST", "/admin/mode", {"mode": args.mode, "reason": args.reason})
    else:
        doc = _call(args, "GET", "/admin/mode")
    return _print(args, doc, render_mode)


def render_mode(doc: dict[str, Any]) -> None:
    how = "forced" if doc["forced"] else ("automatic" if doc["automatic"] else "fixed")
    print(f"mode {doc['mode']} ({how}); switches {doc['switches']}; signals {doc['signals']}")
    for change in doc["history"][-5:]:
        print(f"  {change['from']} -> {change['to']}: {change['reason']}")


def render_status(doc: dict[str, Any]) -> None:
    print(f"endpoint {doc['endpoint']}: {doc['mode']}")
    print(f"  {'ROLE':<10} {'VERSION':<16} {'TRAFFIC':>8} {'REQUESTS':>9} {'ERRORS':>7} "
          f"{'P99 MS':>8} {'AGREEMENT':>9} {'DELTA MS':>9}")  # fmt: skip
    for v in doc["versions"]:
        window, shadow = v["window"], v["shadow"]
        print(
            f"  {v['role']:<10} {v['model'] + '@' + v['version']:<16} "
            f"{v['traffic_percent']:>7.1f}% {v['requests']:>9} {v['errors']:>7} "
            f"{_fmt(window['p99_ms']):>8} {_fmt(shadow['agreement']):>9} "
            f"{_fmt(shadow['latency_delta_ms']):>9}"
        )
    for v in doc["versions"]:
        if "drift" in v:  # only the status view carries drift, not deploy/promote answers
            print(f"  {v['model']}@{v['version']} drift: {_drift_line(v['drift'])}")
    rollout = doc.get("rollout")
    if rollout:
        steps = " -> ".join(f"{p:g}" for p in rollout["steps_percent"])
        print(f"  rollout: {rollout['stage']}, step {rollout['step']} ({rollout['percent']:g} %) "
              f"of {steps}; step running {rollout['step_running_s']} s")  # fmt: skip
        print(f"  waiting for: {rollout['waiting_for']}")
    if doc.get("load_failure"):
        print(f"  this process cannot serve the latest route: {doc['load_failure']}")
    scale = doc.get("autoscale")
    if scale:
        last = scale.get("last_decision") or {}
        print(f"  replicas: {scale['ready']} ready, {scale['pending']} pending, want "
              f"{scale['desired']} (autoscale {scale['min_replicas']}-{scale['max_replicas']})"
              + (f"; last: {last['action']}, {last['reason']}" if last else ""))  # fmt: skip
    processes = doc.get("processes")
    if processes:
        print(f"  route revision {doc.get('revision')}; processes:")
        for p in processes:
            marks = [m for m, on in (("leader", p["leader"]), ("this", p["this"])) if on]
            failure = p.get("load_failure")
            note = f"  CANNOT LOAD revision {failure['revision']}: {failure['message']}" if (
                failure) else ""  # fmt: skip
            print(f"    {p['id']:<32} revision {p['revision']!s:<5} mode {p['mode'] or '-':<9} "
                  f"{' '.join(marks):<12}{note}")  # fmt: skip


def _drift_line(drift: dict[str, Any] | None) -> str:
    """`ok (psi 0.03, ks 0.05 on confidence)`: the worst signal, or each drifting one."""
    if drift is None:
        return "not watched"
    signals = drift["signals"]
    if drift["state"].startswith("collecting"):
        key = "reference_rows" if drift["state"] == "collecting reference" else "window_rows"
        rows = max((s[key] for s in signals), default=0)
        return f"{drift['state']} ({rows} rows so far)"
    ranked = sorted((s for s in signals if s["psi"] is not None), key=lambda s: -s["psi"])
    if drift["state"] == "drifting":
        flagged = [f"{s['signal']} psi {s['psi']:.2f}, ks {s['ks']:.2f}" for s in ranked
                   if s["drifting"]]  # fmt: skip
        more = f"; {len(flagged) - 3} more" if len(flagged) > 3 else ""
        return "DRIFTING " + "; ".join(flagged[:3]) + more
    worst = ranked[0]
    return f"ok (psi {worst['psi']:.2f}, ks {worst['ks']:.2f} on {worst['signal']})"


def render_history(doc: dict[str, Any]) -> None:
    for entry in doc["entries"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"]))
        print(f"{when}  {entry['actor']:<10} {entry['action']:<9} {entry['endpoint'] or '-':<10} "
              f"{entry['reason']}")  # fmt: skip


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
