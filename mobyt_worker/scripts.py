"""The Redis Lua scripts, shipped as ``.lua`` files in ``lua/``: each file is read once
per process and registered once per client (redis-py then runs it by its SHA)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script


@cache
def source(name: str) -> str:
    return files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def register(client: redis.Redis, name: str) -> Script:
    return client.register_script(source(name))
