"""``send``, ``enqueue`` and ``cancel``: through the workers (validated, opt-outs honoured,
exactly once, tracked). Only ``cancel --direct`` calls the provider from here, for an
order the workers do not track: it can withdraw an SMS, never send one."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import datetime
from typing import Any, Sequence

from ..config import Settings
from ..sms import SendRequest, build_send_request
from ..store.orders import OrderRecord
from .output import emit, orders_table, painter, table
from .resources import (
    await_answer, checked_order_id, load_settings, open_runtime, order_argument, provider_client, workers_app,
)


def _send_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", action="append", required=True, metavar="NUM", help="recipient (repeatable, or a comma list)")
    p.add_argument("--message", required=True, metavar="TEXT")
    p.add_argument("--sender", metavar="S", help="1-11 letters/digits (default: MOBYT_DEFAULT_SENDER)")
    p.add_argument("--type", dest="message_type", metavar="N|L", help="N = SMS Top, L = SMS Direct")
    p.add_argument("--at", metavar="ISO", help="schedule, e.g. 2030-01-01T09:00:00+01:00")
    p.add_argument("--order-id", metavar="ID", help="1-32 letters/digits (default: a new random id)")
    p.add_argument("--return-credits", action="store_true", help="ask for the credits used")


def _send_request(args: argparse.Namespace, settings: Settings) -> SendRequest:
    """The send the arguments describe, validated (InvalidInput names the field)."""
    return build_send_request(
        recipients=[n for item in args.to for n in item.split(",")],
        message=args.message,
        message_type=args.message_type or settings.default_message_type,
        sender=args.sender if args.sender is not None else settings.default_sender,
        scheduled_at=args.at,
        order_id=args.order_id or uuid.uuid4().hex,
        return_credits=args.return_credits,
        country=settings.country,
        tz=settings.timezone,
        now=datetime.now(settings.timezone),
        non_gsm=settings.non_gsm,
    )


#: Said after a direct cancel: the workers know nothing of it.
UNTRACKED = "\n\nuntracked: cancelled directly, not through the workers (no record in Redis)"


def _timeout_arguments(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument("--timeout", type=float, default=default, metavar="S",
                   help=f"give up waiting for the workers after S seconds ({default:.0f})")


def send_command_arguments(p: argparse.ArgumentParser) -> None:
    _send_arguments(p)
    _timeout_arguments(p, 60.0)


def cmd_send(args: argparse.Namespace) -> int:
    """``mobyt.send_sms`` through the workers, waiting for its answer."""
    settings = load_settings()
    reply = _through_workers(settings, _send_request(args, settings), args)
    return emit(args, reply, _reply_table(reply))


def enqueue_arguments(p: argparse.ArgumentParser) -> None:
    _send_arguments(p)
    p.add_argument("--wait", action="store_true", help="follow the order(s) until every recipient is final")
    _timeout_arguments(p, 300.0)


def _through_workers(settings: Settings, request: SendRequest, args: argparse.Namespace) -> dict[str, Any]:
    """Enqueue the validated send and wait for the workers' answer. Without one in time the
    message stays queued under its order id: only a retry with that id is safe."""
    rt = open_runtime(settings)
    try:
        sent = rt.producer.enqueue(request)
        oid = sent.order_id
        return await_answer(sent.result, args.timeout,
                            f"order {oid} is queued but no worker answered within {args.timeout:g} s; "
                            f"to retry, reuse the id (--order-id {oid}), never a new one")
    finally:
        rt.close()


def _reply_table(reply: dict[str, Any]) -> str:
    count = reply["recipients"]
    return table(["order_id", "status", "recipients", "credits", "orders"],
                 [[reply["order_id"], reply["status"], len(count) if isinstance(count, list) else count,
                   reply["credits"], len(reply.get("orders") or [reply["order_id"]])]])


def cmd_enqueue(args: argparse.Namespace) -> int:
    """``mobyt.send_sms`` through the workers: sent exactly once, tracked in Redis, split
    into chunks when large. ``--wait`` follows it to the end, with progress on stderr."""
    settings = load_settings()
    request = _send_request(args, settings)  # refuse bad input before anything is queued
    reply = _through_workers(settings, request, args)
    if args.wait:
        reply["final"] = _follow(reply.get("orders") or [reply["order_id"]], len(request.recipients), args.timeout)
    human = _reply_table(reply)
    if args.wait:
        human += "\n\n" + orders_table([r for r in reply["final"]], painter())
        reply["final"] = [r.to_dict() for r in reply["final"]]
    return emit(args, reply, human)


def _follow(order_ids: Sequence[str], recipients: int, timeout: float) -> list[OrderRecord]:
    """Poll the order records until all are final; show progress where stderr is a terminal."""
    store = open_runtime().store
    deadline = time.monotonic() + timeout
    show = sys.stderr.isatty()
    while True:
        records = [store.get_order(oid, with_history=False) for oid in order_ids]
        known = [r for r in records if r is not None]
        done = sum(1 for r in known for state in r.recipients.values() if state.final)
        if show:
            print(f"\r{done}/{recipients} recipients final, {sum(r.final for r in known)}/{len(order_ids)} orders",
                  end="", file=sys.stderr, flush=True)
        if len(known) == len(order_ids) and all(r.final for r in known):
            if show:
                print(file=sys.stderr)
            return known
        if time.monotonic() > deadline:
            raise TimeoutError(f"orders not final after {timeout:.0f} s: see `mobyt order ORDER_ID`")
        time.sleep(0.5)


def cancel_arguments(p: argparse.ArgumentParser) -> None:
    order_argument(p)
    p.add_argument("--direct", action="store_true",
                   help="call REMOVE_DELAYED from here, for an order the workers do not track")
    _timeout_arguments(p, 60.0)


def cmd_cancel(args: argparse.Namespace) -> int:
    """``mobyt.cancel`` through the workers, so the order's record says ``cancelled``."""
    order_id = checked_order_id(args.order_id)
    if args.direct:
        with provider_client() as client:
            client.remove_delayed(order_id)
        return emit(args, {"order_id": order_id, "cancelled": True, "tracked": False},
                    f"cancelled {order_id}" + UNTRACKED)
    from ..contract import CANCEL, QUEUE  # noqa: PLC0415 - only the commands that enqueue need Celery

    pending = workers_app(load_settings()).send_task(CANCEL, kwargs={"order_id": order_id}, queue=QUEUE)
    record = await_answer(pending, args.timeout, f"cancel of {order_id} is queued but no worker answered "
                                            f"within {args.timeout:g} s; see `mobyt order {order_id}`")
    return emit(args, record, f"{order_id} {record['state']}")
