"""Histogram bucket bounds, in seconds: one definition each, shared by Redis and Prometheus.

The handler latency buckets are both the fields of the live stats hash (``{P}:stats``, moved
to SQL by the flush and read by the admin's quantiles) and the bounds of the
``presence_handler_duration_seconds`` histogram, so the two always agree. Task durations are
counted per bucket in ``{P}:<task>:last`` and exposed as histograms at scrape time.
"""

from __future__ import annotations

# Handler latency: from a frame's arrival to its handler's result.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

# Periodic task runs (sweep, flush, reap, session writer, reconcile).
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# The hot path's batched Redis call (heartbeat.lua for a batch of sockets).
ROUNDTRIP_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

# Webhook POSTs.
WEBHOOK_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Held heartbeats (a failover, a pause): from a blip to past the default hold of 20 s.
HOLD_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0)
