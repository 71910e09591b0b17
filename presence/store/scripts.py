"""Lua scripts: one file each under ``lua/``, loaded once and run by SHA."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError

LUA_DIR = Path(__file__).resolve().parent / "lua"

INCLUDE = "--!include "


def _inline_includes(source: str) -> str:
    """Replace each ``--!include NAME`` line with ``lua/lib/NAME.lua`` (shared Lua code)."""
    lines = []
    for line in source.splitlines(keepends=True):
        if line.startswith(INCLUDE):
            lines.append((LUA_DIR / "lib" / f"{line[len(INCLUDE) :].strip()}.lua").read_text())
        else:
            lines.append(line)
    return "".join(lines)


class LuaScript:
    """A Lua file run by EVALSHA; loaded (SCRIPT LOAD) only when the server does not know it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _inline_includes((LUA_DIR / f"{name}.lua").read_text())
        # Redis names a script by the SHA1 of its source, so the digest is known up front.
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    def run(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run on a sync client."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new or restarted server: load once, then retry
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    async def arun(self, client: aredis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run on an async client."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]


@cache
def script(name: str) -> LuaScript:
    """The named script from ``presence/store/lua/``."""
    return LuaScript(name)
