"""Observability basics: structured logs, the Prometheus counters, histogram buckets.

A leaf below the store: it counts and logs what the layers above report and reads nothing
itself (the scrape-time reads of Redis are ``presence.ops.collector``).
"""
