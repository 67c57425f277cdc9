"""The ``mobyt`` command: send and cancel through the workers, read what they track in
Redis, call the provider directly (``--direct``, status, history...), or run the simulator.

Every subcommand is one small function registered in :data:`COMMANDS` (name, help,
arguments, run); add a subcommand by adding a row. Output is aligned columns for
humans, or one JSON document on stdout with ``--json`` (dates in ISO-8601).
Settings come from the environment (``MOBYT_LOGIN``, ``MOBYT_PASSWORD``,
``MOBYT_BASE_URL``... and ``.env``).

Exit codes:
  0  ok
  1  anything else
  2  bad input: an invalid argument (named), a configuration error, a usage error
  3  the provider refused the request (KO|code|message, HTTP 4xx)
  4  transient failure (timeout, connection, HTTP 5xx, unreadable answer, Redis not
     answering, no worker answer in time): try again with the same --order-id;
     after send --direct, the SMS may have gone out: check with `mobyt status ORDER_ID`

Errors are one line on stderr (a JSON object with ``--json``), never a traceback for
known errors, never the password.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Sequence

import redis
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .. import errors
from ..client import MobytClient
from ..config import Settings
from ..fleet import Fleet, quick_client
from ..runtime import Runtime
from ..sms import SendRequest, build_send_request, normalize_recipient, validate_order_id
from ..store import STATES, OrderRecord, parse_sentinel_url

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

#: The exit-code table of this docstring, shown by every ``--help``.
EPILOG = __doc__[__doc__.index("Exit codes:") : __doc__.index("\n\nErrors are")] if __doc__ else ""


@dataclass(frozen=True)
class Command:
    """One subcommand: ``arguments`` fills its parser, ``run`` returns the exit code."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --- output --------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Dataclasses, enums and dates as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], paint: Callable[[str], str] | None = None) -> str:
    """Aligned columns, two spaces apart; '-' for empty cells. ``paint`` colours body cells."""
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    body = paint or (lambda c: c)
    return "\n".join("  ".join((body(c) if i else c) + " " * (w - len(c)) for c, w in zip(row, widths)).rstrip()
                     for i, row in enumerate(cells))


def emit(args: argparse.Namespace, data: Any, human: str) -> int:
    print(json.dumps(_plain(data), ensure_ascii=False, indent=2) if args.json else human)
    return 0


# --- helpers -------------------------------------------------------------------------


def _settings() -> Settings:
    return Settings.from_env()


def _client(settings: Settings | None = None) -> MobytClient:
    return MobytClient(settings or _settings())


def _when(raw: str, field: str, settings: Settings) -> datetime:
    """ISO-8601 date or date-time; without an offset it is the provider's local time."""
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise errors.InvalidInput(field, f"{raw[:40]!r} is not an ISO-8601 date-time") from None
    return value if value.utcoffset() is not None else value.replace(tzinfo=settings.timezone)


# --- subcommands ---------------------------------------------------------------------


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


def _send_direct(args: argparse.Namespace) -> int:
    """SENDSMS, once, around the workers: no opt-out check, no record, no exactly-once
    across runs. The order id is fixed before the request so an unclear outcome can be
    checked with ``mobyt status`` instead of sending again."""
    settings = _settings()
    request = _send_request(args, settings)
    with _client(settings) as client:
        try:
            receipt = client.send_sms(request)
        except errors.ProviderUnavailable as exc:
            if not exc.ambiguous:
                raise
            hint = f"order {request.order_id} may have been sent: check with `mobyt status {request.order_id}`"
            raise type(exc)(f"{exc.message}; {hint}", exc.code) from None
    data = {
        "order_id": receipt.order_id,
        "recipients": list(request.recipients),
        "status": "scheduled" if request.scheduled_at else "accepted",
        "scheduled_at": request.scheduled_at,
        "credits": receipt.count if request.return_credits else None,
        "accepted_recipients": None if request.return_credits else receipt.count,
        "parts": request.length.parts,
        "tracked": False,
    }
    counted = ("credits", receipt.count) if request.return_credits else ("recipients", receipt.count)
    human = table(["order_id", "status", counted[0], "scheduled_at"],
                  [[receipt.order_id, data["status"], counted[1], request.scheduled_at]])
    return emit(args, data, human + UNTRACKED)


#: Said after every direct call: the workers know nothing of it.
UNTRACKED = "\n\nuntracked: sent directly, not through the workers (no opt-out check, no record in Redis)"


def _timeout_arguments(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument("--timeout", type=float, default=default, metavar="S",
                   help=f"give up waiting for the workers after S seconds ({default:.0f})")


def _direct_or_workers(p: argparse.ArgumentParser, direct_help: str) -> None:
    """``--direct`` (call the provider from here) or the workers, answering within ``--timeout``."""
    p.add_argument("--direct", action="store_true", help=direct_help)
    _timeout_arguments(p, 60.0)


def _send_command_arguments(p: argparse.ArgumentParser) -> None:
    _send_arguments(p)
    _direct_or_workers(p, "call SENDSMS from here, around the workers: untracked, no opt-out check")


def cmd_send(args: argparse.Namespace) -> int:
    """``mobyt.send_sms`` through the workers, waiting for its answer; ``--direct`` calls
    the provider from here instead."""
    if args.direct:
        return _send_direct(args)
    settings = _settings()
    reply = _through_workers(settings, _send_request(args, settings), args)
    return emit(args, reply, _reply_table(reply))


def _enqueue_arguments(p: argparse.ArgumentParser) -> None:
    _send_arguments(p)
    p.add_argument("--wait", action="store_true", help="follow the order(s) until every recipient is final")
    _timeout_arguments(p, 300.0)


def _through_workers(settings: Settings, request: SendRequest, args: argparse.Namespace) -> dict[str, Any]:
    """Enqueue the validated send and wait for the workers' answer. Without one in time the
    message stays queued under its order id: only a retry with that id is safe."""
    from ..producer import send_sms  # noqa: PLC0415 - only these commands need Celery

    oid = request.order_id
    sent = send_sms(_workers(settings), request.recipients, args.message, sender=request.sender,
                    message_type=request.message_type, scheduled_at=args.at, order_id=oid,
                    return_credits=request.return_credits)
    return _answer(sent.result, args.timeout,
                   f"order {oid} is queued but no worker answered within {args.timeout:g} s; "
                   f"to retry, reuse the id (--order-id {oid}), never a new one")


def _reply_table(reply: dict[str, Any]) -> str:
    count = reply["recipients"]
    return table(["order_id", "status", "recipients", "credits", "orders"],
                 [[reply["order_id"], reply["status"], len(count) if isinstance(count, list) else count,
                   reply["credits"], len(reply.get("orders") or [reply["order_id"]])]])


def cmd_enqueue(args: argparse.Namespace) -> int:
    """``mobyt.send_sms`` through the workers: sent exactly once, tracked in Redis, split
    into chunks when large. ``--wait`` follows it to the end, with progress on stderr."""
    settings = _settings()
    request = _send_request(args, settings)  # refuse bad input before anything is queued
    reply = _through_workers(settings, request, args)
    if args.wait:
        reply["final"] = _follow(reply.get("orders") or [reply["order_id"]], len(request.recipients), args.timeout)
    human = _reply_table(reply)
    if args.wait:
        human += "\n\n" + _orders_table([r for r in reply["final"]], _painter())
        reply["final"] = [r.to_dict() for r in reply["final"]]
    return emit(args, reply, human)


def _follow(order_ids: Sequence[str], recipients: int, timeout: float) -> list[OrderRecord]:
    """Poll the order records until all are final; show progress where stderr is a terminal."""
    store = _runtime().store
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


def _order_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("order_id", metavar="ORDER_ID")


def cmd_status(args: argparse.Namespace) -> int:
    with _client() as client:
        rows = client.sms_status(args.order_id)
    data = {"order_id": args.order_id, "recipients": [
        {**_plain(r), "final": r.status.is_final} for r in rows]}
    human = table(["recipient", "status", "final", "delivered_at"],
                  [[r.recipient, r.status, r.status.is_final, r.delivered_at] for r in rows])
    return emit(args, data, human)


def _cancel_arguments(p: argparse.ArgumentParser) -> None:
    _order_arguments(p)
    _direct_or_workers(p, "call REMOVE_DELAYED from here, for an order the workers do not track")


def cmd_cancel(args: argparse.Namespace) -> int:
    """``mobyt.cancel`` through the workers, so the order's record says ``cancelled``."""
    order_id = _order_id(args.order_id)
    if args.direct:
        with _client() as client:
            client.remove_delayed(order_id)
        return emit(args, {"order_id": order_id, "cancelled": True, "tracked": False},
                    f"cancelled {order_id}" + UNTRACKED.replace("sent", "cancelled"))
    from ..worker import QUEUE  # noqa: PLC0415 - only the commands that enqueue need Celery

    pending = _workers(_settings()).send_task("mobyt.cancel", kwargs={"order_id": order_id}, queue=QUEUE)
    record = _answer(pending, args.timeout, f"cancel of {order_id} is queued but no worker answered "
                                            f"within {args.timeout:g} s; see `mobyt order {order_id}`")
    return emit(args, record, f"{order_id} {record['state']}")


def _range_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--from", dest="date_from", metavar="ISO", required=required,
                   help="start (ISO-8601; without offset: provider local time)")
    p.add_argument("--to", dest="date_to", metavar="ISO", required=required, help="end (ISO-8601)")


def _history_arguments(p: argparse.ArgumentParser) -> None:
    _range_arguments(p)
    p.add_argument("--window", type=float, default=24.0, metavar="HOURS",
                   help="one SMSHISTORY request per HOURS of the period (24); progress on stderr")


def cmd_history(args: argparse.Namespace) -> int:
    """SMSHISTORY one window at a time, with progress where stderr is a terminal."""
    settings = _settings()
    start, end = _when(args.date_from, "from", settings), _when(args.date_to, "to", settings)
    if not args.window > 0:
        raise errors.InvalidInput("window", "must be a positive number of hours")
    show = sys.stderr.isatty()
    rows: list[Any] = []
    with _client(settings) as client:
        for done, windows, found in client.sms_history_windows(start, end, timedelta(hours=args.window)):
            rows += found
            if show:
                print(f"\rSMSHISTORY {done}/{windows} windows, {len(rows)} orders", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)
    human = table(["order_id", "created_at", "type", "sender", "recipients", "scheduled_at"],
                  [dataclasses.astuple(r) for r in rows])
    return emit(args, rows, human)


def _credits_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stored", action="store_true",
                       help="the balance last stored in Redis by mobyt.check_credits, with its time (the default)")
    which.add_argument("--refresh", action="store_true", help="ask the provider, store the answer in Redis, show it")
    which.add_argument("--live", action="store_true", help="ask the provider only (CREDITS); Redis is not used")


def cmd_credits(args: argparse.Namespace) -> int:
    """The balance the workers stored (default), refreshed (--refresh), or asked live (--live)."""
    if not args.live:
        return _stored_credits(args)
    with _client() as client:
        rows = client.credits()
    return emit(args, rows, table(["type", "nation", "available"], [dataclasses.astuple(r) for r in rows]))


def _inbox_arguments(p: argparse.ArgumentParser) -> None:
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
    settings = _settings()
    ranged = args.date_from is not None or args.date_to is not None
    if ranged and (args.new or args.since is not None):
        raise errors.InvalidInput("from", "--from/--to cannot be combined with --new or --since")
    if ranged and (args.date_from is None or args.date_to is None):
        raise errors.InvalidInput("to" if args.date_to is None else "from", "--from and --to go together")
    with _client(settings) as client:
        if args.new:
            rows = client.new_messages()
        elif ranged:
            rows = client.inbox_history(_when(args.date_from, "from", settings), _when(args.date_to, "to", settings))
        else:
            rows = client.inbox_since(args.since or 0)
    human = table(["id", "received_at", "sender", "receiver", "keyword", "text"],
                  [[m.id, m.received_at, m.sender, m.receiver, m.keyword, m.text] for m in rows])
    return emit(args, rows, human)


def _simulator_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089)
    p.add_argument("--latency", type=float, default=0.0, metavar="S", help="seconds added to every answer")
    p.add_argument("--delivery-delay", type=float, default=2.0, metavar="S", help="seconds until DLVRD")


def cmd_simulator(args: argparse.Namespace) -> int:
    from ..sandbox import serve  # only this command needs the fake provider

    serve(host=args.host, port=args.port, latency=args.latency, delivery_delay=args.delivery_delay)
    return 0


# --- what the workers keep in Redis (credits, inbox, opt-outs) --------------------------


def _runtime() -> Runtime:
    settings = _settings()
    _check_redis(settings)
    return Runtime(settings)


def _check_redis(settings: Settings) -> None:
    """One ping with short timeouts and no retry, so that a Redis that does not answer
    is a transient error (exit 4) within seconds, not after the workers' long retries."""
    if settings.redis_url.startswith("sentinel://"):
        hosts, db, password = parse_sentinel_url(settings.redis_url)
        client = Sentinel(hosts, sentinel_kwargs={"socket_timeout": 2, "password": password}).master_for(
            settings.sentinel_master, db=db, password=password, **QUICK_REDIS)
        where = f"sentinels of {settings.sentinel_master}"
    else:
        client = redis.Redis.from_url(settings.redis_url, **QUICK_REDIS)
        kwargs = client.connection_pool.connection_kwargs
        where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    try:
        client.ping()
    except redis.RedisError as exc:
        raise redis.ConnectionError(f"Redis at {where} does not answer ({type(exc).__name__})") from None
    finally:
        client.close()


#: Client options of that ping.
QUICK_REDIS: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2, "retry": Retry(NoBackoff(), 0)}


def _workers(settings: Settings) -> Celery:
    """The Celery app the workers read, once Redis is known to answer."""
    _check_redis(settings)
    from ..worker import create_app  # noqa: PLC0415 - only the commands that enqueue need Celery

    return create_app(settings)


def _answer(pending: AsyncResult, timeout: float, unanswered: str) -> Any:
    """The task's result (its error raised as ours); ``unanswered`` says what to do if none came."""
    from celery.exceptions import TimeoutError as NoAnswer  # noqa: PLC0415

    try:
        return pending.get(timeout=timeout)
    except NoAnswer:
        raise TimeoutError(unanswered) from None
    finally:
        pending.backend.remove_pending_result(pending)  # not left to a __del__ at exit


def _stored_credits(args: argparse.Namespace) -> int:
    rt = _runtime()
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


def _stored_inbox(args: argparse.Namespace) -> int:
    if args.date_from is not None or args.date_to is not None:
        raise errors.InvalidInput("from", "--from/--to cannot be combined with --stored")
    if args.limit < 1:
        raise errors.InvalidInput("limit", "must be at least 1")
    rt = _runtime()
    try:
        rows = rt.inbox.recent(limit=args.limit)
    finally:
        rt.close()
    human = table(["id", "received_at", "sender", "receiver", "keyword", "source", "text"],
                  [[m["id"], m["received_at"], m["sender"], m["receiver"], m["keyword"], m["source"], m["text"]]
                   for m in rows])
    return emit(args, rows, human)


def _optouts_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clear", metavar="NUMBER", help="remove NUMBER from the opt-outs: sends to it are allowed again")


def cmd_optouts(args: argparse.Namespace) -> int:
    """Numbers that sent STOP (sends to them are refused), or clear one of them."""
    rt = _runtime()
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


# --- orders tracked in Redis ----------------------------------------------------------

#: Terminal colours (SGR codes) of statuses and order states.
_GOOD, _BAD, _OPEN, _DIM = "32", "31", "33", "2"
_COLOURS = {
    **dict.fromkeys(("DLVRD", "completed"), _GOOD),
    **dict.fromkeys(("ERROR", "TIMEOUT", "TOOM4NUM", "TOOM4USER", "UNKNPFX", "UNKNRCPT", "BLACKLISTED", "UNKNOWN",
                     "failed", "expired"), _BAD),
    **dict.fromkeys(("SCHEDULED", "SENT", "WAIT4DLVR", "WAITING", "pending", "sending", "unsent", "scheduled",
                     "accepted"), _OPEN),
    "cancelled": _DIM,
}


def _painter() -> Callable[[str], str] | None:
    """Colours for stdout when it is a terminal and NO_COLOR (no-color.org) is unset."""
    if not sys.stdout.isatty() or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return None
    return lambda cell: f"\x1b[{_COLOURS[cell]}m{cell}\x1b[0m" if cell in _COLOURS else cell


def _statuses(record: OrderRecord) -> str:
    """``DLVRD 2, ERROR 1``; a recipient with no status yet counts as pending."""
    counts = Counter(r.status or "pending" for r in record.recipients.values())
    return ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))


def _orders_table(records: Sequence[OrderRecord], paint: Callable[[str], str] | None) -> str:
    return table(["order_id", "state", "created_at", "type", "sender", "recipients", "statuses", "polls", "batch_id"],
                 [[r.order_id, r.state, r.created_at, r.message_type, r.sender, len(r.recipients), _statuses(r),
                   r.polls, r.batch_id] for r in records], paint)


def _order_id(raw: str, field: str = "order_id") -> str:
    try:
        return validate_order_id(raw)
    except errors.InvalidInput as exc:
        raise errors.InvalidInput(field, exc.message) from None


def cmd_order(args: argparse.Namespace) -> int:
    """One tracked order: the record, each recipient's status, the history of changes."""
    rt = _runtime()
    try:
        record = rt.store.get_order(_order_id(args.order_id))
        if record is None and rt.store.batch_orders(args.order_id):  # what a bulk send answered with
            return _show_batch(args, rt, args.order_id)
    finally:
        rt.close()
    if record is None:
        raise errors.OrderNotFound(args.order_id)
    paint = _painter()
    fields = [
        ("state", record.state), ("final", record.final), ("type", record.message_type), ("sender", record.sender),
        ("created_at", record.created_at), ("scheduled_at", record.scheduled_at),
        ("accepted_at", record.accepted_at), ("credits", record.credits), ("parts", record.parts),
        ("polls", record.polls), ("attempts", record.attempts), ("batch_id", record.batch_id),
        ("task_id", record.task_id), ("error", " ".join(filter(None, [record.error_code, record.error])) or None),
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


def _orders_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", action="extend", nargs="+", choices=STATES, metavar="STATE", dest="states",
                   help=f"only orders in these states: {', '.join(STATES)}")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N orders, newest first (20)")


def cmd_orders(args: argparse.Namespace) -> int:
    """Recent tracked orders, newest first."""
    if args.limit < 1:
        raise errors.InvalidInput("limit", "must be at least 1")
    rt = _runtime()
    try:
        records = rt.store.recent_orders(limit=args.limit, states=args.states)
    finally:
        rt.close()
    if not records and not args.json:
        print("no tracked order" + (f" in state {', '.join(args.states)}" if args.states else ""), file=sys.stderr)
    return emit(args, [{**r.to_dict(), "history": None} for r in records], _orders_table(records, _painter()))


def _resend_arguments(p: argparse.ArgumentParser) -> None:
    _order_arguments(p)
    p.add_argument("--i-accept-a-possible-duplicate", action="store_true", dest="accept_duplicate", required=True,
                   help="the earlier attempt may have been billed: this send may be a second one")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the workers (60)")


def cmd_resend(args: argparse.Namespace) -> int:
    """The operator's way out of ``in_doubt``: lift the doubt by decision (tracked: an event
    ``state=resend``, a WARNING, ``resends`` on the record) and send through the workers."""
    order_id = _order_id(args.order_id)
    rt = _runtime()
    try:
        record = rt.store.require_order(order_id)
        if not record.request:
            raise errors.OrderNotResendable(order_id, "its request was not recorded")
        rt.store.allow_resend(order_id)
        logging.getLogger(__name__).warning("order %s: resend accepted by the operator (was %s); a duplicate is "
                                            "possible", order_id, record.state)
        from ..worker import QUEUE  # noqa: PLC0415 - only this command needs Celery

        kwargs = {**json.loads(record.request), "order_id": order_id}
        reply = rt.producer.send_task("mobyt.send_sms", kwargs=kwargs, queue=QUEUE).get(timeout=args.timeout)
    finally:
        rt.close()
    return emit(args, reply, table(["order_id", "status"], [[reply["order_id"], reply["status"]]]))


def _batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("batch_id", metavar="BATCH_ID", help="the order_id a bulk send answered with")


def cmd_batch(args: argparse.Namespace) -> int:
    """The orders of a bulk send, one per chunk, and their totals."""
    rt = _runtime()
    try:
        return _show_batch(args, rt, _order_id(args.batch_id, "batch_id"))
    finally:
        rt.close()


def _show_batch(args: argparse.Namespace, rt: Runtime, batch_id: str) -> int:
    records = [r for r in (rt.store.get_order(oid, with_history=False) for oid in rt.store.batch_orders(batch_id))
               if r is not None]
    if not records:
        raise errors.OrderNotFound(batch_id)
    states = Counter(r.state for r in records)
    statuses = Counter(s.status or "pending" for r in records for s in r.recipients.values())
    summary = (f"batch {batch_id}: {len(records)} orders, {sum(statuses.values())} recipients; "
               + ", ".join(f"{k} {v}" for k, v in sorted(states.items())) + "; "
               + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    data = {"batch_id": batch_id, "states": dict(states), "statuses": dict(statuses),
            "orders": [r.to_dict() for r in records]}
    return emit(args, data, summary + "\n\n" + _orders_table(records, _painter()))


def cmd_health(args: argparse.Namespace) -> int:
    """The fleet at a glance (fleet.py); exit 0 when ready, 1 when a check failed."""
    snapshot = Fleet(quick_client(_settings()), _settings()).snapshot()
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


def _demo() -> int:
    from ..sandbox import demo  # starts processes; only this command needs it

    return demo.run()


#: The subcommands, in ``--help`` order. Add a row to add a subcommand.
COMMANDS: dict[str, Command] = {
    "send": Command("send an SMS through the workers and wait for their answer; --direct: untracked SENDSMS",
                    _send_command_arguments, cmd_send),
    "enqueue": Command("send through the workers: exactly once, tracked, chunked; --wait follows it",
                       _enqueue_arguments, cmd_enqueue),
    "status": Command("delivery status of an order (SMSSTATUS)", _order_arguments, cmd_status),
    "cancel": Command("cancel a scheduled order through the workers (REMOVE_DELAYED); --direct: untracked",
                      _cancel_arguments, cmd_cancel),
    "history": Command("orders sent between two dates (SMSHISTORY)", _history_arguments, cmd_history),
    "credits": Command("the credit balance stored in Redis; --refresh or --live ask the provider (CREDITS)",
                       _credits_arguments, cmd_credits),
    "inbox": Command("received SMS (SRHISTORYBYID, SRNEWMESSAGES or SRHISTORY), or --stored", _inbox_arguments, cmd_inbox),
    "optouts": Command("numbers that sent STOP (sends refused); --clear NUMBER", _optouts_arguments, cmd_optouts),
    "order": Command("one order tracked in Redis: record, per-recipient status, history (or a batch)", _order_arguments,
                     cmd_order),
    "orders": Command("recent orders tracked in Redis, optionally by state", _orders_arguments, cmd_orders),
    "batch": Command("the orders of a bulk send and their totals", _batch_arguments, cmd_batch),
    "health": Command("workers, beats, queue, orders awaiting a poll or in doubt, last checks; exit 1 if not ready",
                      lambda p: None, cmd_health),
    "resend": Command("send an order left in doubt again, accepting a possible duplicate (tracked)",
                      _resend_arguments, cmd_resend),
    "simulator": Command("run the built-in fake provider", _simulator_arguments, cmd_simulator),
    "demo": Command("the whole story on this machine against the simulator (no account needed)",
                    lambda p: None, lambda args: _demo()),
}


# --- entry point -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    description = "Send through the Mobyt workers, read what they track, or call the provider directly."
    parser = argparse.ArgumentParser(
        prog="mobyt", description=description, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON on stdout (for scripts)")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = subs.add_parser(name, help=command.help, description=command.help, epilog=EPILOG, parents=[common],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def _failure(exc: BaseException) -> tuple[int, dict[str, str]]:
    """Exit code and a one-line description for an error."""
    if isinstance(exc, errors.InvalidInput):
        return 2, {"error": "invalid_input", "field": exc.field, "message": exc.message}
    if isinstance(exc, errors.ConfigError):
        return 2, {"error": "config", "field": exc.variable, "message": exc.message}
    if isinstance(exc, errors.ProviderRejected):
        return 3, {"error": "rejected", "code": exc.code, "message": exc.message}
    if isinstance(exc, errors.ProviderUnavailable):
        return 4, {"error": type(exc).__name__, "code": exc.code, "message": exc.message}
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":  # ours or Celery's: try again
        return 4, {"error": "timeout", "message": str(exc) or "no answer in time"}
    if isinstance(exc, (redis.RedisError, OperationalError)):  # Redis or the broker: try again
        return 4, {"error": "redis", "message": str(exc)}
    return 1, {"error": type(exc).__name__, "message": str(exc)}


def _redact(text: str) -> str:
    """Last line of defence: no error line ever shows the configured password."""
    try:
        secret = _settings().password.reveal()
    except Exception:
        return text
    return text.replace(secret, "***") if secret else text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage error (2) or --help (0)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code, info = _failure(exc)
        if args.json:
            line = json.dumps(info, ensure_ascii=False)
        else:
            where = info.get("field") or info.get("code")
            line = f"mobyt {args.command}: {info['error']}" + (f" [{where}]" if where else "") + f": {info['message']}"
        print(_redact(line), file=sys.stderr)
        return code
