"""Django signals for presence changes, sent in Celery workers from the event log.

Connect a receiver like any Django signal; it is called with ``sender`` the event type
(``"user.offline"``) and ``event``, a :class:`presence.hooks.events.HookEvent`::

    from django.dispatch import receiver
    from presence.signals import user_offline

    @receiver(user_offline)
    def on_offline(sender, event, **kwargs):
        Visit.objects.get_or_create(event_id=event.id, defaults={...})

``presence_event`` is sent for every event too (connected with ``sender="room.vacated"``, a
receiver gets one type only). Delivery is at least once and in order per user; an event is
acknowledged only after every receiver returned, and a receiver that raises is retried with
back-off (docs/hooks.md). **Receivers must be idempotent: use the event id.**

Receivers run in the worker, never on the WebSocket path; they must be connected in every
Celery worker process (e.g. from an ``AppConfig.ready()``).
"""

from __future__ import annotations

from django.dispatch import Signal

from presence.protocol import events

user_online = Signal()
user_offline = Signal()
user_status = Signal()
room_occupied = Signal()
room_vacated = Signal()
room_join = Signal()
room_leave = Signal()
# Every event, whatever its type (after the type's own signal).
presence_event = Signal()

SIGNALS: dict[str, Signal] = {
    events.USER_ONLINE: user_online,
    events.USER_OFFLINE: user_offline,
    events.USER_STATUS: user_status,
    events.ROOM_OCCUPIED: room_occupied,
    events.ROOM_VACATED: room_vacated,
    events.ROOM_JOIN: room_join,
    events.ROOM_LEAVE: room_leave,
}
