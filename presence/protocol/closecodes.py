"""WebSocket close codes of the presence protocol (docs/protocol.md lists when each is sent)."""

CLOSE_UNAUTHORIZED = 4401  # no valid credentials, or they stopped being valid: log in again
CLOSE_FORBIDDEN = 4403  # the account may not connect (inactive, blocked): stop
CLOSE_EXPIRED = 4408  # presence lapsed (no heartbeat within the TTL): reconnect
CLOSE_TERMINATED = 4410  # an operator kicked the session: do not reconnect
CLOSE_FLOODING = 4429  # too many frames, connections or connection attempts: back off
CLOSE_TOO_BIG = 1009  # a frame exceeded WS_MAX_MESSAGE_BYTES
CLOSE_INTERNAL_ERROR = 1011  # a server bug (logged); the connection was cleaned up
CLOSE_SERVICE_RESTART = 1012  # the server is restarting: reconnect with backoff
CLOSE_TRY_AGAIN = 1013  # the presence store is unreachable or slow: reconnect with backoff

# Why the connect gate (connect.lua) refused -> (close code, error code, message).
REFUSALS: dict[str, tuple[int, str, str]] = {
    "blocked": (CLOSE_FORBIDDEN, "blocked", "this account is blocked by an operator"),
    "token_revoked": (CLOSE_UNAUTHORIZED, "token_revoked", "this token was revoked"),
    "session_revoked": (CLOSE_UNAUTHORIZED, "session_revoked", "this login session was ended"),
    "token_used": (CLOSE_UNAUTHORIZED, "token_used", "this token was used already"),
    "connect_rate": (
        CLOSE_FLOODING,
        "connect_rate_limited",
        "too many connection attempts from this address; retry later",
    ),
    "too_many_connections": (
        CLOSE_FLOODING,
        "too_many_connections",
        "too many open connections for this user",
    ),
    "too_many_from_address": (
        CLOSE_FLOODING,
        "too_many_connections",
        "too many open connections from this address",
    ),
}
