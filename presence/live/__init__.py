"""Per-process machinery of a web process: batching, the inbox, fan-out, diffs, the event-log
reader and its replica, the process registry, rate limits and GC tuning.

One instance of each per event loop (``presence.loops.LoopLocal``); below the actions and
the handlers, above the store.
"""
