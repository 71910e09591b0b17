"""The error a client frame is answered with: ``{"type": "error", "code": ..., "message": ...}``.

Raised by frame decoding, dispatch and handlers alike; the codes are listed in
docs/protocol.md. It lives here, at the bottom, so that the frame decoder and the
authorization hook need nothing of the handlers to raise it.
"""

from __future__ import annotations


class FrameError(Exception):
    """Raised by dispatch or a handler: answered with ``{"type": "error", "code": ...}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
