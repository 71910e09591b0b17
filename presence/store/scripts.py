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


# One entry of a per-node pipeline of scripts: (script, keys, args).
ScriptCall = tuple[LuaScript, Sequence[str], Sequence[Any]]


def _queue_calls(pipe: Any, calls: Sequence[ScriptCall], which: Sequence[int]) -> None:
    for i in which:
        lua, ks, args = calls[i]
        # execute_command, not pipe.evalsha: redis-py's cluster pipelines block the method
        # (a script's keys may span slots in general); ours touch one slot each, and the
        # cluster client routes an EVALSHA by its keys.
        pipe.execute_command("EVALSHA", lua.sha, len(ks), *ks, *args)


def _settle(
    calls: Sequence[ScriptCall], results: list[Any], which: Sequence[int], got: Any
) -> list[int]:
    """Store ``got`` (answers of ``which``) into ``results``; the indexes that hit NOSCRIPT."""
    missing = []
    for i, answer in zip(which, got, strict=True):
        if isinstance(answer, NoScriptError):
            missing.append(i)
        results[i] = answer
    return missing


def _raise_first(results: list[Any]) -> list[Any]:
    for answer in results:
        if isinstance(answer, Exception):
            raise answer
    return results


def run_many(client: redis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run several scripts in ONE pipeline (one round trip; a Cluster client's pipeline
    sends one per node it touches). A script the server does not know is loaded and only
    the calls that hit NOSCRIPT run again (they wrote nothing): a second round trip once
    per server start."""
    if len(calls) == 1:
        lua, ks, args = calls[0]
        return [lua.run(client, ks, args)]
    results: list[Any] = [None] * len(calls)
    which = list(range(len(calls)))
    pipe = client.pipeline(transaction=False)
    _queue_calls(pipe, calls, which)
    missing = _settle(calls, results, which, pipe.execute(raise_on_error=False))
    if missing:
        for lua in {calls[i][0] for i in missing}:
            client.script_load(lua.source)
        pipe = client.pipeline(transaction=False)
        _queue_calls(pipe, calls, missing)
        _settle(calls, results, missing, pipe.execute(raise_on_error=False))
    return _raise_first(results)


async def arun_many(client: aredis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Async twin of :func:`run_many`."""
    if len(calls) == 1:
        lua, ks, args = calls[0]
        return [await lua.arun(client, ks, args)]
    results: list[Any] = [None] * len(calls)
    which = list(range(len(calls)))
    pipe = client.pipeline(transaction=False)
    _queue_calls(pipe, calls, which)
    missing = _settle(calls, results, which, await pipe.execute(raise_on_error=False))
    if missing:
        for lua in {calls[i][0] for i in missing}:
            await client.script_load(lua.source)
        pipe = client.pipeline(transaction=False)
        _queue_calls(pipe, calls, missing)
        _settle(calls, results, missing, await pipe.execute(raise_on_error=False))
    return _raise_first(results)
