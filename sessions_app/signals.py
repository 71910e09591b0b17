"""Signals of connection sessions, for apps that act on them (sessions_app imports no app)."""

from django.dispatch import Signal

# An operator kicked a live session (sessions_app.actions.do_kick_session), before its socket
# is told to close. Arguments: session (ConnectionSession), revoke_seconds (float | None).
connection_kicked = Signal()
