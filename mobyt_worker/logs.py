"""Structured logs: every line says which task and which order it is about, no line shows
a full phone number, and the format is text or JSON (``MOBYT_LOG_FORMAT``).

How it works, without touching any task body:

- the task context (``task_id``, ``task``, ``order_id``) lives in a :class:`~contextvars.ContextVar`
  set by :func:`bind` when a task starts and cleared by :func:`clear` when it ends (the
  worker connects both to Celery's ``task_prerun``/``task_postrun`` signals in
  ``worker.py``). A context variable is per thread (and per greenlet), so the threads
  pool's concurrent tasks never see each other's ids;
- :func:`configure` (connected to ``after_setup_logger``/``after_setup_task_logger``)
  gives every handler of a logger two filters and a formatter: :class:`ContextFilter`
  copies the context onto each record (lines Celery logs outside the task, such as
  ``Task ...[id] received``, get the task id from the record's own arguments), and
  :class:`MaskFilter` rewrites the message and any traceback with phone numbers masked
  (:func:`mobyt_worker.sms.mask_number`) and the given secrets replaced by ``***``.
  Filters sit on the handlers, so they see records from every logger, ours and Celery's.

Text lines look like Celery's, with the context after the level::

    [2026-03-09 12:06:36,120: INFO/MainProcess] mobyt.send_sms[5c0e...] order_id=5c0e...: Task ... succeeded

JSON lines are one object each: ``time`` (ISO-8601, UTC), ``level``, ``logger``,
``process``, ``message``, ``task``, ``task_id``, ``order_id`` (null when unknown) and
``exception`` when there is one.

What counts as a phone number: 8 to 15 digits, optionally after ``+``, ``00`` or
``%2B``, not glued to letters, digits, ``-`` or ``.`` (so UUIDs, hex order ids, Redis
stream ids and decimals stay readable). A caller-chosen all-digit order id of that
length is masked in message text too; the ``order_id`` field always shows it whole.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from .sms import mask_number

FORMATS = ("text", "json")
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(context)s%(message)s"
FIELDS = ("task", "task_id", "order_id")

_context: ContextVar[dict[str, str]] = ContextVar("mobyt_log_context", default={})
_PHONE = re.compile(r"(?<![\w.\-])(?:\+|%2[Bb])?[0-9]{8,15}(?![\w\-]|\.[0-9])")


# --- the task context ----------------------------------------------------------------------


def bind(**fields: str | None) -> None:
    """Set the context of the current task (``task``, ``task_id``, ``order_id``); None drops a field."""
    current = dict(_context.get())
    for name, value in fields.items():
        if value:
            current[name] = str(value)
        else:
            current.pop(name, None)
    _context.set(current)


def clear() -> None:
    _context.set({})


def current() -> dict[str, str]:
    return dict(_context.get())


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """``with bound(order_id=...):`` the fields hold inside the block only."""
    token = _context.set(dict(_context.get()))
    try:
        bind(**fields)
        yield
    finally:
        _context.reset(token)


# --- filters -------------------------------------------------------------------------------


def mask_numbers(text: str) -> str:
    """``text`` with every phone number masked (see the module docstring)."""
    return _PHONE.sub(lambda m: mask_number("+" + m.group(0)[3:] if m.group(0)[:3].upper() == "%2B" else m.group(0)),
                      text)


class ContextFilter(logging.Filter):
    """Adds ``task``, ``task_id``, ``order_id`` and a printable ``context`` to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        args = record.args if isinstance(record.args, dict) else {}
        for name in FIELDS:
            if not getattr(record, name, None):
                setattr(record, name, ctx.get(name))
        if not getattr(record, "task_id") and isinstance(args.get("id"), str):  # Celery's "Task name[id] received"
            record.task_id, record.task = args["id"], getattr(record, "task") or args.get("name")
        record.context = _context_text(record)
        return True


def _context_text(record: logging.LogRecord) -> str:
    if not (record.task_id or record.order_id):  # type: ignore[attr-defined]
        return ""
    text = f"{record.task or ''}[{record.task_id or '-'}]"  # type: ignore[attr-defined]
    if record.order_id:  # type: ignore[attr-defined]
        text += f" order_id={record.order_id}"  # type: ignore[attr-defined]
    return text + ": "


class MaskFilter(logging.Filter):
    """Masks phone numbers and ``secrets`` in the message and the traceback of each record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return mask_numbers(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        record.msg, record.args = self.mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


# --- formatters ------------------------------------------------------------------------------


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):  # a handler we did not configure handed it over
            ContextFilter().filter(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            ContextFilter().filter(record)
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
            **{name: getattr(record, name, None) for name in FIELDS},
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(kind: str) -> logging.Formatter:
    if kind not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}")
    return JsonFormatter() if kind == "json" else TextFormatter()


def configure(logger: logging.Logger, kind: str = "text", *, secrets: Iterable[str] = ()) -> None:
    """Give every handler of ``logger`` the context and mask filters and the ``kind`` formatter.

    Idempotent: a handler already configured is left as it is (its formatter is reset).
    """
    secrets = list(secrets)
    for handler in logger.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())  # first: it reads Celery's arguments before masking
            handler.addFilter(MaskFilter(secrets))
        handler.setFormatter(formatter(kind))
