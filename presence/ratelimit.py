"""Per-connection frame limits: a token bucket plus a flood detector."""

from __future__ import annotations

import time
from collections import deque


class TokenBucket:
    """Classic token bucket; ``take()`` is False when the frame must be dropped."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        """Spend one token if there is one."""
        now = time.monotonic() if now is None else now
        # Time never runs backwards for the bucket: a ``now`` before the last update (e.g. an
        # explicit clock other than time.monotonic()) must not drain it below zero.
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class FrameLimiter:
    """Decides, per incoming frame, whether to serve it, drop it, and whether to say so.

    Dropped frames are answered with at most one ``rate_limited`` error per second so the
    answers are no flood themselves; ``flood_drops`` drops within ``flood_window`` seconds
    mean the client is not backing off and the connection is closed (4429).
    """

    def __init__(self, rate: float, burst: int, flood_drops: int, flood_window: float) -> None:
        self.bucket = TokenBucket(rate, burst)
        self.flood_drops = flood_drops
        self.flood_window = flood_window
        self.drops: deque[float] = deque()
        self.last_notice = -1e9

    def check(self, now: float | None = None) -> tuple[bool, bool, bool]:
        """Return (allowed, notify, flooding) for one frame."""
        now = time.monotonic() if now is None else now
        if self.bucket.take(now):
            return True, False, False
        self.drops.append(now)
        while self.drops and self.drops[0] <= now - self.flood_window:
            self.drops.popleft()
        flooding = len(self.drops) >= self.flood_drops
        notify = now - self.last_notice >= 1.0
        if notify:
            self.last_notice = now
        return False, notify, flooding
