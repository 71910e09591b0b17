"""The floor of the hook-latency scenario (bench/hooks.py): the least any log reader can do.

A bare process, no Django: XREAD BLOCK on the event log, and for each batch one POST of its
``join`` entries' event ids to the receiver (urllib, as the platform's deliveries). What it
measures is this machine's Redis wake-up, process scheduling and HTTP round trip at the
moment of the run: the platform's figures are judged against it, measured in the same run.

Usage: ``python -m bench.hooks_floor REDIS_URL STREAM_KEY RECEIVER_URL`` (until SIGTERM).
"""

from __future__ import annotations

import json
import signal
import sys
import urllib.request
from typing import Any

import redis


def main() -> None:
    url, key, target = sys.argv[1:4]
    client = redis.Redis.from_url(url, decode_responses=True)
    running = True

    def stop(signum: int, frame: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    last = "$"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while running:
        raw: Any = client.xread({key: last}, count=500, block=500)
        if not raw:
            continue
        entries = raw[0][1]
        last = entries[-1][0]
        ids = [f"{eid}:user.online" for eid, fields in entries if fields.get("k") == "join"]
        if ids:
            body = json.dumps({"events": [{"id": i} for i in ids]}).encode()
            request = urllib.request.Request(target, data=body, method="POST")
            request.add_header("Content-Type", "application/json")
            with opener.open(request, timeout=5) as response:
                response.read()


if __name__ == "__main__":
    main()
