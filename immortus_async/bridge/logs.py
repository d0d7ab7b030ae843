"""Logging that never shows a token: the bridge's own lines and websockets' lines.

Tokens travel in request paths (``/jobs/42?token=...``), in subscribe frames and
in headers, and websockets logs all three at DEBUG level. Every line the bridge
or its websockets server logs goes through :class:`RedactingLogger`, which
formats the message (and its traceback) and blanks out what looks like a token
before the record exists, so no handler or formatter can see it.

Frames are never logged with their payload, only their opcode and length: a
pattern cannot recognise a token that websockets' log line cut in the middle, or
one that a client sent across several fragments, a few characters a line.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import Any

from websockets.frames import Frame

__all__ = ["REDACTED", "RedactingLogger", "redact"]

REDACTED = "[redacted]"

_PATTERNS = (
    # A query parameter: ?token=... or &token=...
    re.compile(r"(?i)(token=)[^&\s'\"]*"),
    # A JSON field, possibly cut short by a log line's truncation.
    re.compile(r'(?i)("token"\s*:\s*")[^"]*'),
    # A JWT anywhere (its header always starts with eyJ, base64 of '{"'), even a
    # truncated one: part of a signature is still too much.
    re.compile(r"()eyJ[A-Za-z0-9_\-.]*"),
)


def _without_payload(arg: object) -> object:
    if isinstance(arg, Frame):
        continued = "" if arg.fin else ", continued"
        return f"{arg.opcode.name} [{len(arg.data)} bytes{continued}]"
    return arg


def redact(text: str) -> str:
    """``text`` with every token-looking part replaced by ``[redacted]``."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + REDACTED, text)
    return text


class RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter that formats each message and redacts tokens from it.

    A websocket frame among the arguments is logged as its opcode and length,
    never its payload.

    Pass it wherever a logger is taken (websockets' ``serve(logger=...)``); the
    records keep the wrapped logger's name, so logging configuration for
    ``websockets.server`` or ``immortus_async.bridge`` applies as usual.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, None)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log ``msg % args`` at ``level`` with tokens redacted, frames without payload."""
        if not self.isEnabledFor(level):
            return
        text = str(msg)
        args = tuple(map(_without_payload, args))
        if args:
            try:
                text = text % args
            except (TypeError, ValueError):
                text = " ".join([text, *map(str, args)])
        # A traceback is text too (an exception may quote a path): it is formatted
        # here so that it passes through redact() with the message.
        exc_info = kwargs.pop("exc_info", None)
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if isinstance(exc_info, tuple) and exc_info[0] is not None:
            text += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, redact(text), **kwargs)
