"""WebSocket URL routes."""

from django.urls import path

from presence.consumers import PresenceConsumer

websocket_urlpatterns = [
    path("ws/presence/", PresenceConsumer.as_asgi()),
]
