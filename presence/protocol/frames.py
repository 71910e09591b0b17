"""Decoding client frames: bounded JSON, never an exception other than FrameError.

``json.loads`` recurses once per nesting level, so ~1 KB of ``[[[[…`` raises RecursionError
(not ValueError); and it turns a 100,000-digit number into an int digit by digit. Both are
refused here *before* the parser runs: nesting is measured by a scan that only starts when the
frame holds more brackets than the limit allows (a heartbeat holds one), and numbers are
bounded by parse hooks. Every failure is a :class:`FrameError` the consumer answers with an
error frame; the connection stays open.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from presence.conf import app_settings
from presence.protocol.errors import FrameError

# A JSON string (escapes included) or one bracket: brackets inside strings do not nest.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def nesting_exceeds(text: str, limit: int) -> bool:
    """True when ``text`` opens more than ``limit`` arrays/objects inside each other."""
    if text.count("[") + text.count("{") <= limit:
        return False  # cannot nest deeper than it has brackets: the common case, O(n) in C
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        bracket = match.group()
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        elif bracket in "]}":
            depth -= 1
    return False


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > app_settings.MAX_JSON_NUMBER_DIGITS:
        raise _NumberTooLongError
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > app_settings.MAX_JSON_NUMBER_DIGITS + 8:  # digits, sign, '.', exponent
        raise _NumberTooLongError
    value = float(text)
    if math.isinf(value):
        raise _NumberTooLongError  # 1e999
    return value


def _no_constants(text: str) -> Any:
    raise _NotJSONError  # NaN, Infinity, -Infinity: Python accepts them, JSON does not


class _NumberTooLongError(ValueError):
    pass


class _NotJSONError(ValueError):
    pass


def decode(text: str) -> dict[str, Any]:
    """Parse one text frame into a JSON object, or raise FrameError (bad_json, bad_frame)."""
    limit = app_settings.MAX_JSON_DEPTH
    if nesting_exceeds(text, limit):
        raise FrameError("bad_json", f"the frame nests deeper than {limit} levels")
    try:
        frame = json.loads(
            text,
            parse_int=_bounded_int,
            parse_float=_bounded_float,
            parse_constant=_no_constants,
        )
    except _NumberTooLongError:
        raise FrameError(
            "bad_json",
            f"a number is longer than {app_settings.MAX_JSON_NUMBER_DIGITS} digits",
        ) from None
    except (ValueError, RecursionError):
        # RecursionError cannot come from nesting any more (bounded above); kept so that a
        # pathological input still gets an answer instead of killing the connection.
        raise FrameError("bad_json", "the frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("bad_frame", "a frame must be a JSON object")
    return frame


def text_size(text: str) -> int:
    """Bytes ``text`` takes as UTF-8 (lone surrogates, which only a test harness can send,
    counted as the 3 bytes they would take, not an exception)."""
    return len(text.encode("utf-8", "surrogatepass"))
