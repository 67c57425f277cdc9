"""The Redis Lua scripts, shipped as ``.lua`` files in ``lua/``: each file is read once
per process and registered once per client (redis-py then runs it by its SHA).

The scripts that read or write an order's state run behind a prelude generated from
states.py, so that Lua and Python follow one table: ``STATE`` (the names), ``UNSETTLED``
(a set), ``TRANSITION`` (event -> ``to``, ``from``; ``''`` is no record)
and ``move(event, state)``, the state the event leads to from ``state``, or nil when the
table refuses it. A script writes a state only as ``move`` returns it.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Iterable

import redis
from redis.commands.core import Script

from ..states import TRANSITIONS, UNSETTLED, OrderState

#: The scripts that get the prelude.
ORDER_SCRIPTS = frozenset({"accept", "apply_statuses", "claim_send", "drop_intent", "record_intent"})


def _set(states: Iterable[OrderState | None]) -> str:
    return "{" + ", ".join(f"[{_lua(s)}]=true" for s in sorted(states, key=lambda s: s or "")) + "}"


def _lua(state: OrderState | None) -> str:
    return f"'{state or ''}'"


@cache
def prelude() -> str:
    """The order-state table as Lua source (one statement a line)."""
    names = ", ".join(f"{s.name}={_lua(s)}" for s in OrderState)
    rows = ", ".join(f"['{event}']={{to={_lua(t.target)}, from={_set(t.sources)}}}"
                     for event, t in TRANSITIONS.items())
    return "\n".join([
        "-- generated from mobyt_worker/states.py: the order's states and the events that move it",
        f"local STATE = {{{names}}}",
        f"local UNSETTLED = {_set(UNSETTLED)}",
        f"local TRANSITION = {{{rows}}}",
        "local function move(event, state) local t = TRANSITION[event]; if t.from[state or ''] then return t.to end end",
        "",
    ])


@cache
def source(name: str) -> str:
    """The script as registered: the file, behind the prelude for an order script."""
    text = files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return prelude() + text if name in ORDER_SCRIPTS else text


def register(client: redis.Redis, name: str) -> Script:
    return client.register_script(source(name))
