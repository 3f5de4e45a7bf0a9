"""`surge keys create | list | show | revoke | rotate`: the CLI face of /admin/keys.

The key itself is printed once, by `create` and `rotate`, and never again: the server
keeps only its hash.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from surge.cli_rollouts import _call, _print, common


def add_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="client API keys: create, list, show, revoke, rotate")
    verbs = keys.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="a new key for a tenant (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="", help="what the key is for")
    create.add_argument(
        "--scope",
        action="append",
        help="infer (every endpoint), infer:<endpoint>, feedback, receipts:read, metrics, "
        "gateway (may set X-Tenant / X-Priority), admin; repeat for several (default: infer)",
    )
    create.add_argument("--scopes", help="the same, comma-separated: infer,feedback")
    create.add_argument("--expires-in", metavar="DURATION", help="e.g. 90d, 12h, 3600s")
    create.add_argument("--rps", type=float, help="requests per second for this key")
    create.add_argument("--burst", type=int, help="requests at once (with --rps)")
    create.add_argument("--rows-per-s", type=float, help="input rows per second for this key")
    create.add_argument("--priority", type=int, help="0..9 (0 is shed first)")
    common(create)
    create.set_defaults(func=cmd_create)
    listing = verbs.add_parser("list", help="every key: id, tenant, scopes, state, last use")
    common(listing)
    listing.set_defaults(func=cmd_list)
    for verb, helptext in (("show", "one key"), ("revoke", "revoke a key everywhere at once")):
        one = verbs.add_parser(verb, help=helptext)
        one.add_argument("key_id")
        common(one)
        one.set_defaults(func=cmd_one, verb=verb)
    rotate = verbs.add_parser("rotate", help="a new key like this one; the old one ends later")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", default="1h", help="how long the old key still works")
    common(rotate)
    rotate.set_defaults(func=cmd_rotate)


def seconds(raw: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if raw and raw[-1] in units:
            return float(raw[:-1]) * units[raw[-1]]
        return float(raw)
    except ValueError:
        raise SystemExit(f"expected a duration like 90d, 12h or 3600s, got {raw!r}") from None


def cmd_create(args: argparse.Namespace) -> int:
    scopes = [*(args.scope or []), *(s for s in (args.scopes or "").split(",") if s)]
    body: dict[str, Any] = {"tenant": args.tenant, "name": args.name,
                            "scopes": scopes or ["infer"]}  # fmt: skip
    if args.expires_in:
        body["expires_in_s"] = seconds(args.expires_in)
    limits = {"requests_per_s": args.rps, "requests_burst": args.burst,
              "rows_per_s": args.rows_per_s}  # fmt: skip
    limits = {k: v for k, v in limits.items() if v is not None}
    if limits:
        body["limits"] = limits
    if args.priority is not None:
        body["priority"] = args.priority
    return _print(args, _call(args, "POST", "/admin/keys", body), render_new)


def cmd_list(args: argparse.Namespace) -> int:
    return _print(args, _call(args, "GET", "/admin/keys"), render_list)


def cmd_one(args: argparse.Namespace) -> int:
    method = "DELETE" if args.verb == "revoke" else "GET"
    return _print(args, _call(args, method, f"/admin/keys/{args.key_id}"), render_one)


def cmd_rotate(args: argparse.Namespace) -> int:
    body = {"grace_s": seconds(args.grace)}
    return _print(args, _call(args, "POST", f"/admin/keys/{args.key_id}/rotate", body), render_new)


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _state(k: dict[str, Any]) -> str:
    if k.get("revoked_at") is not None:
        return "revoked"
    expires = k.get("expires_at")
    if expires is not None and expires <= datetime.now(UTC).timestamp():
        return "expired"
    return "active"


def render_new(k: dict[str, Any]) -> None:
    print(f"key {k['id']} for tenant {k['tenant']} ({', '.join(k['scopes'])})")
    print(f"  {k['key']}")
    print("  shown this once: the server keeps only its hash")


def render_one(k: dict[str, Any]) -> None:
    print(f"key {k['id']}  {_state(k)}  tenant {k['tenant']}  scopes {', '.join(k['scopes'])}")
    print(f"  name        {k.get('name') or '-'}")
    print(f"  created     {_when(k['created_at'])} by {k['created_by']}")
    print(f"  expires     {_when(k.get('expires_at'))}")
    print(f"  revoked     {_when(k.get('revoked_at'))}")
    print(f"  last used   {_when(k.get('last_used_at'))}")
    if k.get("settings"):
        print(f"  settings    {k['settings']}")


def render_list(doc: dict[str, Any]) -> None:
    rows = doc["keys"]
    if not rows:
        print("no keys")
        return
    print(f"{'id':14} {'state':8} {'tenant':16} {'scopes':28} {'last used':26} name")
    for k in rows:
        print(f"{k['id']:14} {_state(k):8} {k['tenant'][:16]:16} "
              f"{','.join(k['scopes'])[:28]:28} {_when(k.get('last_used_at')):26} "
              f"{k.get('name') or ''}")  # fmt: skip
