"""Channel-layer group names (Channels allows only ``[A-Za-z0-9_.-]``, under 100 chars)."""

from __future__ import annotations

import hashlib

GLOBAL_GROUP = "presence.global"


def room_group(room: str) -> str:
    """Group of a room's connections; hashed because room names may contain ``:``."""
    return "presence.room." + hashlib.sha1(room.encode(), usedforsecurity=False).hexdigest()
