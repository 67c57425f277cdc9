"""``health``, ``config``, ``optouts`` and ``resend``: the operator's view of the fleet and ways out."""

from __future__ import annotations

import argparse
import json
import logging

from .. import errors
from ..fleet import Fleet, quick_client
from ..sms import normalize_recipient
from .output import emit, table
from .resources import checked_order_id, load_settings, open_runtime, order_argument


def cmd_health(args: argparse.Namespace) -> int:
    """The fleet at a glance (fleet.py); exit 0 when ready, 1 when a check failed."""
    snapshot = Fleet(quick_client(load_settings()), load_settings()).snapshot()
    lines = [table(["check", "ok", "detail"], [[c["name"], c["ok"], c["detail"]] for c in snapshot["checks"]])]
    for kind in ("workers", "beats"):
        rows = snapshot.get(kind, [])
        lines.append(table([kind[:-1], "pid", "version", "seen s ago", "tasks", "queues/lock"],
                           [[r["host"], r["pid"], r["version"], r["last_seen_age"], r["tasks_run"],
                             r.get("queues", r.get("holds_lock"))] for r in rows]))
    figures = [k for k in snapshot if k not in ("checks", "workers", "beats", "failed")]
    lines.append(table(["figure", "value"], [[k, snapshot[k]] for k in figures]))
    emit(args, snapshot, "\n\n".join(lines))
    return 0 if snapshot["ready"] else 1


def cmd_config(args: argparse.Namespace) -> int:
    """The settings in effect (environment, then ``.env``): secrets as ``***``, URLs without passwords."""
    shown = load_settings().shown()
    rows = [[name, json.dumps(value) if isinstance(value, (list, dict)) else value] for name, value in shown.items()]
    return emit(args, shown, table(["setting", "value"], rows))


def optouts_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clear", metavar="NUMBER", help="remove NUMBER from the opt-outs: sends to it are allowed again")


def cmd_optouts(args: argparse.Namespace) -> int:
    """Numbers that sent STOP (sends to them are refused), or clear one of them."""
    rt = open_runtime()
    try:
        if args.clear is None:
            stopped = rt.optouts.all()
            rows = [{"number": number, **info} for number, info in sorted(stopped.items())]
            return emit(args, rows, table(["number", "at", "message_id"],
                                          [[r["number"], r.get("at"), r.get("message_id")] for r in rows]))
        number = args.clear.strip()
        try:
            number = normalize_recipient(number, rt.settings.country)
        except (errors.InvalidInput, ValueError):
            pass  # stored as received when it did not parse: clear that spelling
        cleared = rt.optouts.clear(number)
    finally:
        rt.close()
    human = f"cleared {number}" if cleared else f"{number} was not opted out"
    return emit(args, {"number": number, "cleared": cleared}, human)


def resend_arguments(p: argparse.ArgumentParser) -> None:
    order_argument(p)
    p.add_argument("--i-accept-a-possible-duplicate", action="store_true", dest="accept_duplicate", required=True,
                   help="the earlier attempt may have been billed: this send may be a second one")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the workers (60)")


def cmd_resend(args: argparse.Namespace) -> int:
    """The operator's way out of ``in_doubt``: lift the doubt by decision (tracked: an event
    ``state=resend``, a WARNING, ``resends`` on the record, ``mobyt_resends_total``) and send
    through the workers."""
    order_id = checked_order_id(args.order_id)
    rt = open_runtime()
    try:
        record = rt.store.require_order(order_id)
        if not record.request:
            raise errors.OrderNotResendable(order_id, "its request was not recorded")
        rt.store.allow_resend(order_id)
        rt.metrics.inc("resends", previous=record.state)  # flushed by rt.close()
        logging.getLogger(__name__).warning("order %s: resend accepted by the operator (was %s); a duplicate is "
                                            "possible", order_id, record.state)
        from ..contract import QUEUE, SEND_SMS  # noqa: PLC0415 - only this command needs Celery

        kwargs = {**json.loads(record.request), "order_id": order_id}
        reply = rt.producer.send_task(SEND_SMS, kwargs=kwargs, queue=QUEUE).get(timeout=args.timeout)
    finally:
        rt.close()
    return emit(args, reply, table(["order_id", "status"], [[reply["order_id"], reply["status"]]]))
