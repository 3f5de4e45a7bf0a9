"""`surge receipts` and `surge costs`: the CLI face of /admin/receipts and /admin/costs.

surge receipts REQUEST_ID                 one request's receipt: what ran, why, cost, energy
surge receipts [--endpoint E] [--tenant T] [--since -1h] [--degraded] [--escalated] [--limit N]
surge receipts --summary [filters]        totals: count, cost, energy, escalated, degraded
surge costs                               per endpoint and version, with the idle line;
                                          each tenant's spend against its budget
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote, urlencode

from surge.cli_rollouts import _call, _print, common


def add_commands(sub: argparse._SubParsersAction) -> None:
    receipts = sub.add_parser("receipts", help="a request's receipt, or a filtered list")
    receipts.add_argument("request_id", nargs="?", help="show this request's receipt")
    receipts.add_argument("--endpoint")
    receipts.add_argument("--tenant")
    receipts.add_argument("--status", type=int)
    receipts.add_argument("--since", help="epoch seconds, ISO 8601, or -15m / -2h / -1d")
    receipts.add_argument("--until")
    receipts.add_argument("--degraded", action="store_true", help="only degraded answers")
    receipts.add_argument("--escalated", action="store_true", help="only escalated ones")
    receipts.add_argument("--limit", type=int, default=20)
    receipts.add_argument("--summary", action="store_true", help="totals instead of a list")
    common(receipts)
    receipts.set_defaults(func=cmd_receipts)
    costs = sub.add_parser("costs", help="cost and energy per endpoint, with idle capacity")
    common(costs)
    costs.set_defaults(func=cmd_costs)


def cmd_receipts(args: argparse.Namespace) -> int:
    if args.request_id:
        doc = _call(args, "GET", f"/admin/receipts/{quote(args.request_id, safe='')}")
        return _print(args, doc, render_receipt)
    query: dict[str, Any] = {
        k: v
        for k, v in (
            ("endpoint", args.endpoint),
            ("tenant", args.tenant),
            ("status", args.status),
            ("since", args.since),
            ("until", args.until),
            ("degraded", "true" if args.degraded else None),
            ("escalated", "true" if args.escalated else None),
        )
        if v is not None
    }
    if args.summary:
        doc = _call(args, "GET", f"/admin/receipts/summary?{urlencode(query)}")
        return _print(args, doc, render_summary)
    query["limit"] = args.limit
    doc = _call(args, "GET", f"/admin/receipts?{urlencode(query)}")
    return _print(args, doc, render_list)


def cmd_costs(args: argparse.Namespace) -> int:
    doc = _call(args, "GET", "/admin/costs")
    doc["tenants"] = _call(args, "GET", "/admin/budgets")["tenants"]
    return _print(args, doc, render_costs)


def render_receipt(r: dict[str, Any]) -> None:
    cost, energy = r["cost"], r["energy"]
    print(f"receipt {r['id']}  {r['time']}  {r['endpoint']}  status {r['status']}"
          + (f" ({r['error']})" if r.get("error") else ""))  # fmt: skip
    print(f"  tenant      {r.get('tenant') or '-'}")
    print(f"  served by   {r.get('served_by') or '-'}"
          + "".join(f"  [{f}]" for f in ("escalated", "degraded") if r.get(f)))  # fmt: skip
    print(f"  why         {r['why']}")
    print(f"  time        {r['total_ms']:.2f} ms: "
          + ", ".join(f"{k} {v:.2f}" for k, v in r["stages_ms"].items()))  # fmt: skip
    for run in r["runs"]:
        print(
            f"  ran         {run['model']} ({run['role']}): {run['rows']} of a "
            f"{run['batch_rows']}-row batch, {run['compute_ms']:.3f} ms compute, "
            f"queued {run['queue_ms']:.2f} ms, {run['energy_j']:.4f} J, "
            f"{run['cost']:.6f} {cost['currency']}"
        )
    print(f"  cost        {cost['total']:.6f} {cost['currency']}")
    print(f"  energy      {energy['joules']:.4f} J ({energy.get('source') or 'n/a'})")
    if r.get("needs_review"):
        print(f"  review      rows {r['needs_review']} flagged for human review")


def render_list(doc: dict[str, Any]) -> None:
    rows = doc["receipts"]
    if not rows:
        print("no receipts match")
        return
    print(f"{'time':24} {'request id':36} {'endpoint':14} {'status':>6} {'ms':>8} "
          f"{'cost':>10}  served by")  # fmt: skip
    for r in rows:
        flags = "".join(f" [{f}]" for f in ("escalated", "degraded") if r.get(f))
        print(f"{r['time']:24} {r['id'][:36]:36} {r['endpoint'][:14]:14} {r['status']:>6} "
              f"{r['total_ms']:>8.2f} {r['cost']['total']:>10.6f}  "
              f"{r.get('served_by') or '-'}{flags}")  # fmt: skip


def render_summary(doc: dict[str, Any]) -> None:
    print(f"receipts {doc['receipts']}: cost {doc['cost']:.6f}, energy {doc['energy_j']:.3f} J, "
          f"escalated {doc['escalated']}, degraded {doc['degraded']}")  # fmt: skip
    print(f"written {doc['written_total']}, dropped {doc['dropped_total']} since start")


def render_costs(doc: dict[str, Any]) -> None:
    print(f"{'endpoint':14} {'version':8} {'requests':>9} {'compute s':>10} {'cost':>12} "
          f"{'idle s':>9} {'idle cost':>12} {'energy J':>10}")  # fmt: skip
    for r in doc["endpoints"]:
        print(f"{r['endpoint'][:14]:14} {r['version'][:8]:8} {r['requests']:>9} "
              f"{r['compute_s']:>10.3f} {r['cost']:>12.6f} {r['idle_s']:>9.1f} "
              f"{r['idle_cost']:>12.6f} {r['energy_j']:>10.3f}  {r['currency']}")  # fmt: skip
    sources = doc.get("energy_sources", {})
    if sources:
        print("energy source: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())))
    by_tenant = doc.get("by_tenant", [])
    if by_tenant:
        print(f"\n{'tenant':20} {'requests':>9} {'prompt tok':>11} {'compl. tok':>11} {'cost':>12}")
        for t in by_tenant:
            name = (t["tenant"] or "(none)")[:20]
            tokens = f"{t['prompt_tokens']:>11} {t['completion_tokens']:>11}"
            print(f"{name:20} {t['requests']:>9} {tokens} {t['cost']:>12.6f}")
    saved = doc.get("cache_saved", [])
    if saved:
        print(f"\n{'cache saved':20} {'requests':>9} {'compute s':>10} {'cost':>12}")
        for s in saved:
            print(f"{s['endpoint'][:20]:20} {s['requests_reused']:>9} {s['compute_s']:>10.3f} "
                  f"{s['cost']:>12.6f}")  # fmt: skip
    render_budgets(doc.get("tenants", []))


def render_budgets(tenants: list[dict[str, Any]]) -> None:
    """Each tenant's spend in the current hour and day against its budget."""
    if not tenants:
        print("no tenant has a budget (tenants.<name>.budget)")
        return
    print(f"\n{'tenant':20} {'window':6} {'spent':>12} {'budget':>12} {'used':>6}  resets at")
    for t in tenants:
        budget = t.get("budget")
        shown = f"{budget:>12.6f}" if budget is not None else f"{'-':>12}"
        share = f"{t['share'] * 100:>5.1f}%" if t.get("share") is not None else f"{'-':>6}"
        print(f"{t['tenant'][:20]:20} {t['window']:6} {t['spent']:>12.6f} {shown} {share}  "
              f"{t.get('reset_at') or '-'}")  # fmt: skip
