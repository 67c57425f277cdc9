"""The ``mobyt`` command: send and cancel through the workers, read what they track in
Redis, call the provider directly (``cancel --direct``, status, history...), or run the
simulator. Every send goes through the workers: one door, with the same validation,
opt-outs and exactly-once path for every way in.

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
     answering, no worker answer in time): try again with the same --order-id

Errors are one line on stderr (a JSON object with ``--json``), never a traceback for
known errors, never a password or a token.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

import redis
from kombu.exceptions import OperationalError

from .. import errors
from .operations import cmd_config, cmd_health, cmd_optouts, cmd_resend, optouts_arguments, resend_arguments
from .orders import batch_arguments, cmd_batch, cmd_order, cmd_orders, orders_arguments
from .provider import (cmd_credits, cmd_history, cmd_inbox, cmd_simulator, cmd_status, credits_arguments,
                       history_arguments, inbox_arguments, simulator_arguments)
from .resources import load_settings, order_argument
from .sending import cancel_arguments, cmd_cancel, cmd_enqueue, cmd_send, enqueue_arguments, send_command_arguments


#: The exit-code table of this docstring, shown by every ``--help``.
EPILOG = __doc__[__doc__.index("Exit codes:") : __doc__.index("\n\nErrors are")] if __doc__ else ""


@dataclass(frozen=True)
class Command:
    """One subcommand: ``arguments`` fills its parser, ``run`` returns the exit code."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _demo() -> int:
    from ..sandbox import demo  # starts processes; only this command needs it

    return demo.run()


#: The subcommands, in ``--help`` order. Add a row to add a subcommand.
COMMANDS: dict[str, Command] = {
    "send": Command("send an SMS through the workers and wait for their answer",
                    send_command_arguments, cmd_send),
    "enqueue": Command("send through the workers: exactly once, tracked, chunked; --wait follows it",
                       enqueue_arguments, cmd_enqueue),
    "status": Command("delivery status of an order (SMSSTATUS)", order_argument, cmd_status),
    "cancel": Command("cancel a scheduled order through the workers (REMOVE_DELAYED); --direct: untracked",
                      cancel_arguments, cmd_cancel),
    "history": Command("orders sent between two dates (SMSHISTORY)", history_arguments, cmd_history),
    "credits": Command("the credit balance stored in Redis; --refresh or --live ask the provider (CREDITS)",
                       credits_arguments, cmd_credits),
    "inbox": Command("received SMS (SRHISTORYBYID, SRNEWMESSAGES or SRHISTORY), or --stored", inbox_arguments, cmd_inbox),
    "optouts": Command("numbers that sent STOP (sends refused); --clear NUMBER", optouts_arguments, cmd_optouts),
    "order": Command("one order tracked in Redis: record, per-recipient status, history (or a batch)", order_argument,
                     cmd_order),
    "orders": Command("recent orders tracked in Redis, optionally by state", orders_arguments, cmd_orders),
    "batch": Command("the orders of a bulk send and their totals", batch_arguments, cmd_batch),
    "health": Command("workers, beats, queue, orders awaiting a poll or in doubt, last checks; exit 1 if not ready",
                      lambda p: None, cmd_health),
    "config": Command("the settings in effect, secrets masked", lambda p: None, cmd_config),
    "resend": Command("send an order left in doubt again, accepting a possible duplicate (tracked)",
                      resend_arguments, cmd_resend),
    "simulator": Command("run the built-in fake provider", simulator_arguments, cmd_simulator),
    "demo": Command("the whole story on this machine against the simulator (no account needed)",
                    lambda p: None, lambda args: _demo()),
}


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
    """Last line of defence: no error line ever shows a configured password or token."""
    try:
        secrets = load_settings().secrets()
    except Exception:
        return text
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


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
