"""The presence app's tables, one module per subsystem; Django finds them through this package.

Live presence never touches these tables (it lives in Redis, ``presence/store/``): they hold
what outlives a connection — stats, the handler registry, blocks, and the hooks' outbox.
"""

from presence.models.core import (
    FlushRecord,
    HandlerStatus,
    RegisteredHandler,
    StatsBucket,
    UserBlock,
    UserBlockQuerySet,
)
from presence.models.hooks import (
    DeliveryState,
    HookFailure,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "DeliveryState",
    "FlushRecord",
    "HandlerStatus",
    "HookFailure",
    "RegisteredHandler",
    "StatsBucket",
    "UserBlock",
    "UserBlockQuerySet",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
