"""``order``, ``orders``, ``batch``: the orders the workers track in Redis."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from .. import errors
from ..runtime import Runtime
from ..states import STATES
from .output import emit, orders_table, painter, table
from .resources import checked_order_id, open_runtime


def cmd_order(args: argparse.Namespace) -> int:
    """One tracked order: the record, each recipient's status, the history of changes."""
    rt = open_runtime()
    try:
        record = rt.store.get_order(checked_order_id(args.order_id))
        if record is None and rt.store.batch_orders(args.order_id):  # what a bulk send answered with
            return _show_batch(args, rt, args.order_id)
    finally:
        rt.close()
    if record is None:
        raise errors.OrderNotFound(args.order_id)
    paint = painter()
    fields = [
        ("state", record.state), ("final", record.final), ("type", record.message_type), ("sender", record.sender),
        ("created_at", record.created_at), ("scheduled_at", record.scheduled_at),
        ("accepted_at", record.accepted_at), ("credits", record.credits), ("parts", record.parts),
        ("polls", record.polls), ("attempts", record.attempts), ("batch_id", record.batch_id),
        ("task_id", record.task_id), ("replaces", record.replaces), ("replaced_by", record.replaced_by),
        ("error", " ".join(filter(None, [record.error_code, record.error])) or None),
    ]
    human = "\n\n".join([
        table(["order", record.order_id], fields, paint),
        table(["recipient", "status", "final", "delivered_at", "changed_at"],
              [[number, r.status or "pending", r.final, r.delivered_at, r.changed_at]
               for number, r in sorted(record.recipients.items())], paint),
        table(["at", "recipient", "previous", "status", "source"],
              [[h.get("at"), h.get("recipient"), h.get("previous"), h.get("status"), h.get("source")]
               for h in record.history], paint) if record.history else "no status change yet",
    ])
    return emit(args, record.to_dict(), human)


def orders_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", action="extend", nargs="+", choices=[str(s) for s in STATES], metavar="STATE", dest="states",
                   help=f"only orders in these states: {', '.join(STATES)}")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N orders, newest first (20)")


def cmd_orders(args: argparse.Namespace) -> int:
    """Recent tracked orders, newest first."""
    if args.limit < 1:
        raise errors.InvalidInput("limit", "must be at least 1")
    rt = open_runtime()
    try:
        records = rt.store.recent_orders(limit=args.limit, states=args.states)
    finally:
        rt.close()
    if not records and not args.json:
        print("no tracked order" + (f" in state {', '.join(args.states)}" if args.states else ""), file=sys.stderr)
    return emit(args, [{**r.to_dict(), "history": None} for r in records], orders_table(records, painter()))


def batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("batch_id", metavar="BATCH_ID", help="the order_id a bulk send answered with")


def cmd_batch(args: argparse.Namespace) -> int:
    """The orders of a bulk send, one per chunk, and their totals."""
    rt = open_runtime()
    try:
        return _show_batch(args, rt, checked_order_id(args.batch_id, "batch_id"))
    finally:
        rt.close()


def _show_batch(args: argparse.Namespace, rt: Runtime, batch_id: str) -> int:
    records = [r for r in (rt.store.get_order(oid, with_history=False) for oid in rt.store.batch_orders(batch_id))
               if r is not None]
    if not records:
        raise errors.OrderNotFound(batch_id)
    states = Counter(r.state for r in records)
    statuses = Counter(s.status or "pending" for r in records for s in r.recipients.values())
    unaccepted = sum(max(0, r.recipient_count - len(r.recipients)) for r in records)  # no status rows yet
    if unaccepted:
        statuses["pending"] += unaccepted
    summary = (f"batch {batch_id}: {len(records)} orders, {sum(statuses.values())} recipients; "
               + ", ".join(f"{k} {v}" for k, v in sorted(states.items())) + "; "
               + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    data = {"batch_id": batch_id, "states": dict(states), "statuses": dict(statuses),
            "orders": [r.to_dict() for r in records]}
    return emit(args, data, summary + "\n\n" + orders_table(records, painter()))
