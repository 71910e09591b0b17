"""Per-connection frame limits: a token bucket plus a flood detector."""

from __future__ import annotations

import time
from collections import deque


class TokenBucket:
    """Classic token bucket; ``take()`` is False when the frame must be dropped."""

    # One per connection: slots keep tens of thousands of them small (no __dict__ each).
    __slots__ = ("burst", "rate", "tokens", "updated")

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

    __slots__ = ("bucket", "drops", "flood_drops", "flood_window", "last_notice")

    def __init__(self, rate: float, burst: int, flood_drops: int, flood_window: float) -> None:
        self.bucket = TokenBucket(rate, burst)
        self.flood_drops = flood_drops
        self.flood_window = flood_window
        # Times of recent drops; made on the first drop (an empty deque is ~600 bytes, and
        # most connections never have a frame dropped).
        self.drops: deque[float] | None = None
        self.last_notice = -1e9

    def check(self, now: float | None = None) -> tuple[bool, bool, bool]:
        """Return (allowed, notify, flooding) for one frame."""
        now = time.monotonic() if now is None else now
        if self.bucket.take(now):
            return True, False, False
        drops = self.drops
        if drops is None:
            drops = self.drops = deque()
        drops.append(now)
        while drops and drops[0] <= now - self.flood_window:
            drops.popleft()
        flooding = len(drops) >= self.flood_drops
        notify = now - self.last_notice >= 1.0
        if notify:
            self.last_notice = now
        return False, notify, flooding
