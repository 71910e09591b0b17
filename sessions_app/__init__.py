"""Connection sessions: one row per WebSocket connection, from connect to end."""
