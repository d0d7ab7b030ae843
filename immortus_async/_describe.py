"""How an exception reads as a job's ``error`` text."""

from __future__ import annotations

__all__ = ["describe_error"]


def describe_error(exc: BaseException, *, default: str = "") -> str:
    """``"ValueError: bad row 3"``: the exception's class name and message.

    ``default`` stands in for an empty message (arq stores a bare ``TimeoutError()``
    for a job that ran past its timeout); with neither, the class name alone.
    """
    message = str(exc) or default
    name = type(exc).__name__
    return f"{name}: {message}" if message else name
