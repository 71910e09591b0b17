"""The in-process handler registry: declaration, validation, loading modules, version order.

Nothing here touches the database; persistence and its compare-and-set are in
test_registry_cas.py, dispatch through a real connection in test_handler_dispatch.py.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from presence.handlers import HandlerRegistry, registry
from presence.handlers.lifecycle import compare_versions, latency_quantile, version_key
from presence.handlers.registry import code_version

BUILTINS = {
    "heartbeat",
    "activity",
    "presence.watch",
    "status.set",
    "room.join",
    "room.leave",
    "presence.list",
    "presence.sync",
}


class Payload(BaseModel):
    room: str


@pytest.fixture
def scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[HandlerRegistry, Callable[[str, str], str]]]:
    """A fresh registry (module ``scratch_reg``) and a writer of throwaway handler modules.

    Modules written with ``write(name, source)`` declare into ``scratch_reg.registry``, so
    loading them never touches the project's registry.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "scratch_reg.py").write_text(
        "from presence.handlers import HandlerRegistry\nregistry = HandlerRegistry()\n"
    )
    names = ["scratch_reg"]
    sys.modules.pop("scratch_reg", None)
    import scratch_reg  # type: ignore[import-not-found]

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        # Bytecode caching keys on mtime (one-second resolution): never reuse an old .pyc.
        for cached in tmp_path.glob(f"__pycache__/{name}.*"):
            cached.unlink()
        sys.modules.pop(name, None)
        names.append(name)
        return name

    yield scratch_reg.registry, write
    for name in names:
        sys.modules.pop(name, None)


class TestDeclaration:
    def test_builtins_are_ordinary_core_registrations(self) -> None:
        core = {spec.type for spec in registry if spec.core}
        assert core == BUILTINS
        assert all(registry.get(t).version == "1" for t in BUILTINS)  # type: ignore[union-attr]

    def test_example_family_is_registered_and_not_core(self) -> None:
        spec = registry.get("chat.typing")
        assert spec is not None
        assert not spec.core
        assert spec.timeout == 2.0
        assert spec.path == "presence.handlers.chat.chat_typing"
        assert ("chat.typing", spec.description) in registry.as_choices()

    def test_decorator_defaults(self) -> None:
        reg = HandlerRegistry()

        @reg.handler("demo.ping")
        async def ping(ctx: Any, data: Any) -> None:
            """Answer a ping.

            More text that is not the description.
            """

        spec = reg.get("demo.ping")
        assert spec is not None
        assert spec.description == "Answer a ping."
        assert spec.version == code_version(ping)
        assert spec.version.startswith("h-")
        assert spec.timeout == 5.0
        assert not spec.core

    def test_code_version_changes_with_the_code(self) -> None:
        async def one(ctx: Any, data: Any) -> int:
            return 1

        async def two(ctx: Any, data: Any) -> int:
            return 2

        assert code_version(one) != code_version(two)
        assert code_version(one) == code_version(one)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"type": "Chat.Typing"}, "invalid message type"),
            ({"type": "chat..typing"}, "invalid message type"),
            ({"type": "chat.typing", "timeout": 0}, "timeout must be a positive"),
            ({"type": "chat.typing", "payload": dict}, "pydantic BaseModel"),
            ({"type": "chat.typing", "version": "2024-beta"}, "dotted integers"),
            ({"type": "chat.typing", "version": "1.x"}, "dotted integers"),
        ],
    )
    def test_invalid_declarations_raise(self, kwargs: dict[str, Any], message: str) -> None:
        reg = HandlerRegistry()
        with pytest.raises(ValueError, match=message):

            @reg.handler(**kwargs)
            async def handler(ctx: Any, data: Any) -> None:
                pass

        assert len(list(reg)) == 0

    def test_handler_must_take_ctx_and_data(self) -> None:
        reg = HandlerRegistry()
        with pytest.raises(ValueError, match=r"two arguments, \(ctx, data\)"):

            @reg.handler("demo.one")
            async def one(ctx: Any) -> None:
                pass

    def test_second_handler_for_a_type_is_refused(self) -> None:
        reg = HandlerRegistry()

        @reg.handler("demo.ping", payload=Payload)
        async def first(ctx: Any, data: Payload) -> None:
            pass

        with pytest.raises(ValueError, match="already handled by"):

            @reg.handler("demo.ping")
            async def second(ctx: Any, data: Any) -> None:
                pass

        assert reg.get("demo.ping").func is first  # type: ignore[union-attr]


class TestLoadModules:
    def test_loads_declared_modules(self, scratch: Any) -> None:
        reg, write = scratch
        module = write(
            "hmod_ok",
            """
            from scratch_reg import registry
            @registry.handler("ok.ping", version="2")
            async def ping(ctx, data):
                return {"pong": True}
            """,
        )
        assert reg.load_modules([module]) == []
        assert "ok.ping" in reg
        assert reg.loaded_modules == [module]
        assert reg.failures == []

    def test_import_error_is_recorded_not_raised(self, scratch: Any) -> None:
        reg, write = scratch
        module = write("hmod_broken", "import no_such_dependency_xyz\n")
        failures = reg.load_modules([module])
        assert [f.module for f in failures] == [module]
        assert "ModuleNotFoundError" in failures[0].error
        assert "no_such_dependency_xyz" in failures[0].error
        assert failures[0].types == ()
        assert reg.failures == failures
        assert module not in reg.loaded_modules

    def test_partial_module_is_rolled_back(self, scratch: Any) -> None:
        """A type is served from a fully imported module or not at all."""
        reg, write = scratch
        module = write(
            "hmod_partial",
            """
            from scratch_reg import registry
            @registry.handler("partial.first", version="3")
            async def first(ctx, data):
                return None
            @registry.handler("partial.second", version="not-a-version")
            async def second(ctx, data):
                return None
            """,
        )
        (failure,) = reg.load_modules([module])
        assert "partial.first" not in reg
        assert "partial.second" not in reg
        assert failure.types == (("partial.first", "hmod_partial.first", "3"),)
        assert "ValueError" in failure.error
        assert "dotted integers" in failure.error

    def test_handlers_of_a_helper_that_imported_fine_stay(self, scratch: Any) -> None:
        reg, write = scratch
        write(
            "hmod_helper",
            """
            from scratch_reg import registry
            @registry.handler("helper.ping", version="1")
            async def ping(ctx, data):
                return None
            """,
        )
        module = write("hmod_uses_helper", "import hmod_helper\nraise RuntimeError('late')\n")
        (failure,) = reg.load_modules([module])
        assert "helper.ping" in reg  # its module is imported and stays imported
        assert failure.types == ()

    def test_a_later_successful_load_clears_the_failure(self, scratch: Any) -> None:
        reg, write = scratch
        module = write("hmod_fixed", "raise RuntimeError('boom at import')\n")
        assert len(reg.load_modules([module])) == 1
        write(
            "hmod_fixed",
            """
            from scratch_reg import registry
            @registry.handler("fixed.ping", version="1")
            async def ping(ctx, data):
                return None
            """,
        )
        assert reg.load_modules([module]) == []
        assert "fixed.ping" in reg
        assert reg.failures == []

    def test_strict_modules_raise(self, scratch: Any) -> None:
        reg, write = scratch
        module = write("hmod_strict", "raise RuntimeError('platform bug')\n")
        with pytest.raises(RuntimeError, match="platform bug"):
            reg.load_modules([module], strict=True)


class TestDisabledSet:
    def test_core_types_are_never_disabled(self) -> None:
        reg = HandlerRegistry()

        @reg.handler("demo.core", core=True)
        async def core(ctx: Any, data: Any) -> None:
            pass

        @reg.handler("demo.app")
        async def app(ctx: Any, data: Any) -> None:
            pass

        reg.set_disabled(frozenset({"demo.core", "demo.app", "demo.unknown"}))
        assert reg.disabled == {"demo.app", "demo.unknown"}
        assert not reg.is_disabled("demo.core")


class TestVersionOrder:
    @pytest.mark.parametrize(
        ("new", "old", "expected"),
        [
            ("2", "1", 1),
            ("10", "9", 1),  # numbers, not strings
            ("1.10", "1.9", 1),
            ("1.2.1", "1.2", 1),
            ("1.0", "1", 0),  # trailing zeros do not count
            ("1", "1", 0),
            ("1", "2", -1),
            ("1", "h-0123456789ab", 1),  # a declared version beats a code hash
            ("h-0123456789ab", "1", -1),
            ("h-aaaaaaaaaaaa", "h-bbbbbbbbbbbb", 1),  # hashes: the newer registration wins
            ("h-aaaaaaaaaaaa", "h-aaaaaaaaaaaa", 0),
            ("h-aaaaaaaaaaaa", "", 1),  # unknown (failed before declaring) is lowest
            ("", "h-aaaaaaaaaaaa", -1),
        ],
    )
    def test_compare(self, new: str, old: str, expected: int) -> None:
        assert compare_versions(new, old) == expected

    def test_key_sorts_numerically(self) -> None:
        versions = ["10", "", "2", "h-x", "1.10", "1.9"]
        assert sorted(versions, key=version_key) == ["", "h-x", "1.9", "1.10", "2", "10"]


class TestLatencyQuantile:
    def test_no_data(self) -> None:
        assert latency_quantile({}, 0.95) is None
        assert latency_quantile({"0.01": 0}, 0.5) is None

    def test_quantiles_from_buckets(self) -> None:
        hist = {"0.001": 50, "0.01": 40, "0.1": 6, "1.0": 3, "inf": 1}
        assert latency_quantile(hist, 0.50) == 0.001
        assert latency_quantile(hist, 0.90) == 0.01
        assert latency_quantile(hist, 0.95) == 0.1
        assert latency_quantile(hist, 0.99) == 1.0
        assert latency_quantile(hist, 1.0) == float("inf")
