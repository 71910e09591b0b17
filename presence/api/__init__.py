"""The HTTP API for logged-in users: presence reads and WebSocket tokens."""
