"""Close several things in turn, every one of them whatever happens to the others.

A closer awaited after another is skipped when the first raises, or when the task
that closes is cancelled meanwhile (a web server's shutdown deadline, a test's
timeout): the connections and tasks it would have closed outlive their owner. Here
each is closed in any case, and what stopped one is raised once all are done: the
caller's cancellation first, else the first error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

__all__ = ["close_all"]


async def close_all(
    closers: Iterable[Callable[[], Awaitable[None]] | None],
    *,
    on_error: Callable[[Callable[[], Awaitable[None]], Exception], None] | None = None,
) -> None:
    """Await each closer (None ones skipped), in order, each once.

    ``on_error`` is told of each closer's error instead of it being raised (the
    first, once all are closed).

    Raises:
        asyncio.CancelledError: the caller was cancelled while one closed.
        Exception: the first closer's error, without ``on_error``.
    """
    cancelled: asyncio.CancelledError | None = None
    error: Exception | None = None
    for close in closers:
        if close is None:
            continue
        try:
            await close()
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
        except Exception as exc:
            if on_error is not None:
                on_error(close, exc)
            elif error is None:
                error = exc
    if cancelled is not None:
        raise cancelled
    if error is not None:
        raise error
