"""FrameLimiter and TokenBucket as pure units: every call gets an explicit ``now``."""

from __future__ import annotations

import pytest

from presence.live.ratelimit import FrameLimiter, TokenBucket


class TestTokenBucket:
    def test_burst_then_refill(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=3)

        assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
        assert bucket.take(100.4) is False  # 0.8 of a token
        assert bucket.take(100.5) is True  # 1.0
        assert bucket.take(100.5) is False

    def test_refill_is_capped_at_the_burst(self) -> None:
        bucket = TokenBucket(rate=10.0, burst=2)
        bucket.take(0.0)

        results = [bucket.take(1000.0) for _ in range(3)]

        assert results == [True, True, False]

    def test_explicit_clock_unrelated_to_the_monotonic_one(self) -> None:
        """Times far from ``time.monotonic()`` must neither drain nor overfill the bucket."""
        for start in (0.0, 1e12):
            bucket = TokenBucket(rate=1.0, burst=2)

            assert [bucket.take(start) for _ in range(3)] == [True, True, False]
            assert bucket.take(start + 1.0) is True

    def test_zero_rate_never_refills(self) -> None:
        bucket = TokenBucket(rate=0.0, burst=1)

        assert [bucket.take(0.0), bucket.take(10_000.0)] == [True, False]


def limiter(
    rate: float = 1.0, burst: int = 2, flood_drops: int = 5, flood_window: float = 10.0
) -> FrameLimiter:
    return FrameLimiter(rate, burst, flood_drops, flood_window)


class TestFrameLimiter:
    def test_allowed_frames(self) -> None:
        lim = limiter(burst=2)

        assert lim.check(0.0) == (True, False, False)
        assert lim.check(0.0) == (True, False, False)

    def test_first_drop_notifies_then_silence_within_a_second(self) -> None:
        lim = limiter(rate=0.0, burst=0, flood_drops=100)

        assert lim.check(0.0) == (False, True, False)
        assert lim.check(0.5) == (False, False, False)
        assert lim.check(0.999) == (False, False, False)
        assert lim.check(1.0) == (False, True, False)
        assert lim.check(1.5) == (False, False, False)

    def test_flood_closes_at_exactly_n_drops_in_the_window(self) -> None:
        lim = limiter(rate=0.0, burst=0, flood_drops=5, flood_window=10.0)

        results = [lim.check(float(t)) for t in range(5)]

        assert [flooding for _, _, flooding in results] == [False, False, False, False, True]

    def test_drops_older_than_the_window_are_forgotten(self) -> None:
        lim = limiter(rate=0.0, burst=0, flood_drops=3, flood_window=10.0)
        lim.check(0.0)
        lim.check(1.0)

        # At t=10 the drop at t=0 is exactly one window old: out.
        assert lim.check(10.0)[2] is False
        assert lim.check(10.5)[2] is True

    def test_served_frames_do_not_count_towards_flooding(self) -> None:
        lim = limiter(rate=1.0, burst=1, flood_drops=2, flood_window=10.0)

        # One frame per second is within the rate: never dropped, never flooding.
        assert all(lim.check(float(t))[0] for t in range(50))
        assert lim.drops == type(lim.drops)()

    def test_default_protocol_limits(self) -> None:
        """100 dropped frames within 10 s close the connection (protocol v1 defaults)."""
        lim = FrameLimiter(rate=20.0, burst=40, flood_drops=100, flood_window=10.0)
        t = 0.0
        outcomes = []
        for _ in range(40 + 100):
            outcomes.append(lim.check(t))
            t += 0.0001  # a client blasting frames: refills 0.002 tokens per frame

        allowed = sum(ok for ok, _, _ in outcomes)
        notices = sum(notify for _, notify, _ in outcomes)
        assert allowed == 40
        assert notices == 1
        assert outcomes[-1][2] is True
        assert not any(flooding for _, _, flooding in outcomes[:-1])

    @pytest.mark.parametrize("start", [0.0, 5e6])
    def test_sustained_rate_is_served(self, start: float) -> None:
        lim = limiter(rate=20.0, burst=40, flood_drops=100)

        served = [lim.check(start + i / 20.0)[0] for i in range(200)]

        assert all(served)
