"""Message handlers: the registry and the handler families shipped with the platform.

Application code imports from here::

    from presence.handlers import FrameError, HandlerContext, registry
"""

from presence.handlers.context import HandlerContext
from presence.handlers.registry import HandlerRegistry, HandlerSpec, registry
from presence.protocol.errors import FrameError

__all__ = ["FrameError", "HandlerContext", "HandlerRegistry", "HandlerSpec", "registry"]
