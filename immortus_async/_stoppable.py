"""A background task that ends when told to, whatever it awaits at that moment.

``task.cancel()`` is not enough for a task that reads Redis: on Python 3.11,
``asyncio.wait_for`` loses a cancellation that comes as the call it waits for
completes (it returns the result instead), and redis-py sends each command through
one when the connection has a ``socket_timeout`` (redis-py 8 sets 5 s by default).
The task would go on as if never cancelled, and whoever awaits its end would wait
for ever. An anyio cancel scope cancels the task again at each await until it has
left the scope.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import anyio

__all__ = ["Stoppable"]


class Stoppable:
    """Runs ``body`` in a task of its own, inside a cancel scope that :meth:`stop` cancels.

    Args:
        body: what the task runs.
        name: the task's name.
    """

    __slots__ = ("_scope", "task")

    def __init__(self, body: Coroutine[Any, Any, None], name: str) -> None:
        self._scope = anyio.CancelScope()
        self.task = asyncio.create_task(self._run(body), name=name)
        """The task; it ends without error once stopped (the scope takes its cancellation)."""

    async def _run(self, body: Coroutine[Any, Any, None]) -> None:
        with self._scope:
            await body

    def stop(self) -> None:
        """Cancel the task for good; it may still be unwinding when this returns. Idempotent."""
        self._scope.cancel()

    async def aclose(self) -> None:
        """Stop the task and return once it has ended. Idempotent.

        Raises:
            asyncio.CancelledError: the caller was cancelled meanwhile (the task
                ends all the same). ``await task`` would raise the task's own
                CancelledError too, and a caller that took it for the task's
                would swallow its own.
            Exception: what the task's body raised, if it failed before it was
                stopped: it does not die unheard.
        """
        self.stop()
        await asyncio.wait([self.task])
        if not self.task.cancelled():
            self.task.result()
