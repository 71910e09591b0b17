"""tests/support/ports.py: whose listening socket a port is, read from /proc."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.ports import listens

# A shell whose child listens on a port it prints: `listens` must follow the tree down.
LISTENER = (
    "import socket, sys, time; s = socket.create_server(('127.0.0.1', 0)); "
    "print(s.getsockname()[1], flush=True); time.sleep(60)"
)


@pytest.fixture
def grandchild_listener() -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = subprocess.Popen(
        ["/bin/sh", "-c", f'"{sys.executable}" -c "{LISTENER}"; true'],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    try:
        yield process, port
    finally:
        process.kill()
        process.wait()


def test_a_descendants_listening_socket_counts(
    grandchild_listener: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = grandchild_listener
    assert listens(process.pid, port)


def test_a_port_someone_else_listens_on_does_not(
    grandchild_listener: tuple[subprocess.Popen[str], int],
) -> None:
    process, _ = grandchild_listener
    with socket.create_server(("127.0.0.1", 0)) as ours:
        port = ours.getsockname()[1]
        # The connect a readiness check used to make succeeds: it is not the process's.
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        assert not listens(process.pid, port)


def test_a_process_gone_listens_on_nothing() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert not listens(process.pid, 1)
