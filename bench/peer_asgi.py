"""The peer: django-channels-presence 1.0.0, wired the way its documentation shows.

A synchronous ``WebsocketConsumer`` (the library's API is synchronous ORM code):

- connect: ``Room.objects.add(room, channel_name, user)`` when ``?room=`` names a room;
- every frame: ``@touch_presence`` (updates ``last_seen``), then heartbeats are acknowledged
  with the same frames as the other servers;
- ``room.join``: ``Room.objects.add`` and a reply with the member count; ``room.leave``:
  ``Room.objects.remove``;
- disconnect: ``@remove_presence`` (leaves every room);
- a ``presence_changed`` receiver broadcasts the room's members to the room's group.

Connections are anonymous (the library records them with ``user=None``): the bench's clients
have no session for this project. Served by the peer's own virtualenv (see bench/peer.py).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import parse_qs

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peer_settings")
django.setup()

from asgiref.sync import async_to_sync  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.generic.websocket import WebsocketConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels_presence.decorators import remove_presence, touch_presence  # noqa: E402
from channels_presence.models import Room  # noqa: E402
from channels_presence.signals import presence_changed  # noqa: E402
from django.db.backends.signals import connection_created  # noqa: E402
from django.dispatch import receiver  # noqa: E402
from django.urls import path  # noqa: E402

HELLO = json.dumps({"type": "hello"})


@receiver(connection_created)
def use_wal(sender: Any, connection: Any, **kwargs: Any) -> None:
    """SQLite in WAL mode, as the platform's settings configure it (Django 3.2 has no
    ``init_command`` option for SQLite)."""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL;")


class PeerConsumer(WebsocketConsumer):
    """Presence through django-channels-presence."""

    def connect(self) -> None:
        self.accept()
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        room = (query.get("room") or [""])[0]
        if room:
            Room.objects.add(room, self.channel_name, self.scope.get("user"))
        self.send(text_data=HELLO)

    @remove_presence
    def disconnect(self, code: int) -> None:
        pass

    @touch_presence
    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame = json.loads(text_data or "{}")
        kind = frame.get("type")
        if kind == "heartbeat":
            self.send(text_data=json.dumps({"type": "heartbeat.ack", "id": frame.get("id")}))
        elif kind == "room.join":
            room = Room.objects.add(
                frame["data"]["room"], self.channel_name, self.scope.get("user")
            )
            count = room.presence_set.count()
            reply = {"type": "reply", "id": frame.get("id"), "data": {"count": count}}
            self.send(text_data=json.dumps(reply))
        elif kind == "room.leave":
            Room.objects.remove(frame["data"]["room"], self.channel_name)
            reply = {
                "type": "reply",
                "id": frame.get("id"),
                "data": {"room": frame["data"]["room"]},
            }
            self.send(text_data=json.dumps(reply))

    def presence_message(self, event: dict[str, Any]) -> None:
        """A room's membership changed: forward the broadcast."""
        self.send(text_data=event["text"])


@receiver(presence_changed)
def broadcast_presence(sender: Any, room: Any, **kwargs: Any) -> None:
    """The documented receiver: send the room's current members to everyone in it."""
    members = [u.get_username() for u in room.get_users()]
    text = json.dumps(
        {
            "type": "presence",
            "payload": {
                "channel_name": room.channel_name,
                "members": members,
                "lurkers": int(room.get_anonymous_count()),
            },
        }
    )
    async_to_sync(get_channel_layer().group_send)(
        room.channel_name, {"type": "presence.message", "text": text}
    )


application = ProtocolTypeRouter(
    {"websocket": AuthMiddlewareStack(URLRouter([path("ws/presence/", PeerConsumer.as_asgi())]))}
)
