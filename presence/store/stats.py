"""The fields of the live counters hash (``{P}:stats``) that the stats flush moves to SQL."""

from __future__ import annotations

from presence.obs.buckets import LATENCY_BUCKETS

# Field names inside the {P}:stats hash. Only registered message types get a field of their
# own, so a client cannot grow the hash by inventing types.


def message_field(msg_type: str) -> str:
    """Counter of received messages of one (registered) type."""
    return f"msg:{msg_type}"


def error_field(code: str) -> str:
    """Counter of error frames sent, by error code."""
    return f"err:{code}"


def latency_bucket(seconds: float) -> str:
    """The histogram bucket (upper bound, as text) a handler duration falls in."""
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "inf"


def handler_call_fields(msg_type: str, seconds: float) -> tuple[str, str]:
    """Counters one handler call increments: its calls and its latency bucket."""
    return f"h:{msg_type}:calls", f"h:{msg_type}:lat:{latency_bucket(seconds)}"


def handler_error_field(msg_type: str, code: str) -> str:
    """Counter of a handler's failures: ``timeouts`` for handler_timeout, else ``errors``."""
    return f"h:{msg_type}:{'timeouts' if code == 'handler_timeout' else 'errors'}"
