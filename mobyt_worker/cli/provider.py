"""``status``, ``history``, ``credits``, ``inbox`` ask the provider (credits and inbox
also show what the workers stored in Redis); ``simulator`` runs the fake one."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import timedelta
from typing import Any

from .. import errors
from .output import emit, plain, table
from .resources import load_settings, open_runtime, parse_when, provider_client


def cmd_status(args: argparse.Namespace) -> int:
    with provider_client() as client:
        rows = client.sms_status(args.order_id)
    data = {"order_id": args.order_id, "recipients": [
        {**plain(r), "final": r.status.is_final} for r in rows]}
    human = table(["recipient", "status", "final", "delivered_at"],
                  [[r.recipient, r.status, r.status.is_final, r.delivered_at] for r in rows])
    return emit(args, data, human)


def _range_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--from", dest="date_from", metavar="ISO", required=required,
                   help="start (ISO-8601; without offset: provider local time)")
    p.add_argument("--to", dest="date_to", metavar="ISO", required=required, help="end (ISO-8601)")


def history_arguments(p: argparse.ArgumentParser) -> None:
    _range_arguments(p)
    p.add_argument("--window", type=float, default=24.0, metavar="HOURS",
                   help="one SMSHISTORY request per HOURS of the period (24); progress on stderr")


def cmd_history(args: argparse.Namespace) -> int:
    """SMSHISTORY one window at a time, with progress where stderr is a terminal."""
    settings = load_settings()
    start, end = parse_when(args.date_from, "from", settings), parse_when(args.date_to, "to", settings)
    if not args.window > 0:
        raise errors.InvalidInput("window", "must be a positive number of hours")
    show = sys.stderr.isatty()
    rows: list[Any] = []
    with provider_client(settings) as client:
        for done, windows, found in client.sms_history_windows(start, end, timedelta(hours=args.window)):
            rows += found
            if show:
                print(f"\rSMSHISTORY {done}/{windows} windows, {len(rows)} orders", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)
    human = table(["order_id", "created_at", "type", "sender", "recipients", "scheduled_at"],
                  [dataclasses.astuple(r) for r in rows])
    return emit(args, rows, human)


def credits_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stored", action="store_true",
                       help="the balance last stored in Redis by mobyt.check_credits, with its time (the default)")
    which.add_argument("--refresh", action="store_true", help="ask the provider, store the answer in Redis, show it")
    which.add_argument("--live", action="store_true", help="ask the provider only (CREDITS); Redis is not used")


def cmd_credits(args: argparse.Namespace) -> int:
    """The balance the workers stored (default), refreshed (--refresh), or asked live (--live)."""
    if not args.live:
        return _stored_credits(args)
    with provider_client() as client:
        rows = client.credits()
    return emit(args, rows, table(["type", "nation", "available"], [dataclasses.astuple(r) for r in rows]))


def _stored_credits(args: argparse.Namespace) -> int:
    rt = open_runtime()
    try:
        if args.refresh:
            rt.credits.refresh(rt.client)
        balances = rt.credits.balances()
    finally:
        rt.close()
    if not balances and not args.json:
        print("no balance stored yet: `mobyt credits --refresh`, or run beat", file=sys.stderr)
    human = table(["type", "nation", "available", "at"], [[b.message_type, b.nation, b.available, b.at] for b in balances])
    return emit(args, [b.to_dict() for b in balances], human)


def inbox_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--new", action="store_true",
                       help="SRNEWMESSAGES: only messages not read yet (consumes them)")
    which.add_argument("--since", type=int, metavar="ID", help="SRHISTORYBYID: ids greater than ID (default 0: all)")
    which.add_argument("--stored", action="store_true", help="messages stored in Redis by the workers, newest first")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="with --stored: at most N messages (50)")
    _range_arguments(p, required=False)


def cmd_inbox(args: argparse.Namespace) -> int:
    if args.stored:
        return _stored_inbox(args)
    settings = load_settings()
    ranged = args.date_from is not None or args.date_to is not None
    if ranged and (args.new or args.since is not None):
        raise errors.InvalidInput("from", "--from/--to cannot be combined with --new or --since")
    if ranged and (args.date_from is None or args.date_to is None):
        raise errors.InvalidInput("to" if args.date_to is None else "from", "--from and --to go together")
    with provider_client(settings) as client:
        if args.new:
            rows = client.new_messages()
        elif ranged:
            rows = client.inbox_history(parse_when(args.date_from, "from", settings),
                                        parse_when(args.date_to, "to", settings))
        else:
            rows = client.inbox_since(args.since or 0)
    human = table(["id", "received_at", "sender", "receiver", "keyword", "text"],
                  [[m.id, m.received_at, m.sender, m.receiver, m.keyword, m.text] for m in rows])
    return emit(args, rows, human)


def _stored_inbox(args: argparse.Namespace) -> int:
    if args.date_from is not None or args.date_to is not None:
        raise errors.InvalidInput("from", "--from/--to cannot be combined with --stored")
    if args.limit < 1:
        raise errors.InvalidInput("limit", "must be at least 1")
    rt = open_runtime()
    try:
        rows = rt.inbox.recent(limit=args.limit)
    finally:
        rt.close()
    human = table(["id", "received_at", "sender", "receiver", "keyword", "source", "text"],
                  [[m["id"], m["received_at"], m["sender"], m["receiver"], m["keyword"], m["source"], m["text"]]
                   for m in rows])
    return emit(args, rows, human)


def simulator_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089)
    p.add_argument("--latency", type=float, default=0.0, metavar="S", help="seconds added to every answer")
    p.add_argument("--delivery-delay", type=float, default=2.0, metavar="S", help="seconds until DLVRD")


def cmd_simulator(args: argparse.Namespace) -> int:
    from ..sandbox import serve  # only this command needs the fake provider

    serve(host=args.host, port=args.port, latency=args.latency, delivery_delay=args.delivery_delay)
    return 0
