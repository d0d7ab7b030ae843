"""streaQ as a queue adapter: what the core asks of it (see :mod:`immortus_async.adapters`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streaq import Worker
from streaq.task import AsyncRegisteredTask, SyncRegisteredTask, Task

from ...exceptions import AbortUnsupported
from .. import ADAPTERS, Aborted, Queued
from .strategy import StreaqStrategy

__all__ = ["StreaqAdapter"]


class StreaqAdapter:
    """streaQ: tasks enqueued through a ``streaq.Worker``, read back from streaQ's records."""

    name = "streaq"
    inferred_strategy = ADAPTERS["streaq"].inferred_strategy
    records = StreaqStrategy

    def accepts(self, target: object) -> bool:
        """True for a ``streaq.Worker`` (what streaQ enqueues through)."""
        return isinstance(target, Worker)

    async def enqueue(
        self,
        target: Any,
        function: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        queued: Queued,
    ) -> Task[Any, Any]:
        """Enqueue on the worker ``target``, then record ``queued``; return streaQ's ``Task``.

        ``function`` is a registered task (``@worker.task``), called with ``args``
        and ``kwargs``; a task's name, enqueued as ``worker.enqueue_unsafe`` does;
        or a ``Task`` already made with its arguments (``process.enqueue(path)``,
        configured with ``.start(delay=..., priority=...)``), with no more
        arguments. ``target`` must be entered (``async with worker:``) or running.

        Raises:
            TypeError: ``function`` is none of those, or a ``Task`` came with
                arguments.
            streaq.StreaqError: streaQ refused the task (the worker is not entered,
                its arguments do not serialise); nothing is recorded.
        """
        task = _task(target, function, args, kwargs)
        await task
        await queued(task.id, task.parent.fn_name)
        return task

    async def abort(self, target: Any, job_id: str, aborted: Aborted) -> None:
        """``worker.abort_by_id(job_id, timeout=0)`` on the ``streaq.Worker`` ``target``
        (entered, or running): streaQ's own abort, without waiting.

        A task still delayed is taken out at once, and recorded ``aborted`` here
        (streaQ records nothing of it). A task waiting in the stream is aborted by
        the worker that takes it, before it runs; a running one is cancelled by
        its worker; either way streaQ records ``aborted``, which waiters get.

        Raises:
            AbortUnsupported: ``target`` is not a ``streaq.Worker`` (give the
                Tracker one: ``Tracker(url, queue=worker)``).
        """
        if not isinstance(target, Worker):
            raise AbortUnsupported(
                "streaQ aborts through its worker: give the Tracker one, "
                f"Tracker(..., queue=worker); got {type(target).__name__}"
            )
        if await target.abort_by_id(job_id, timeout=0):
            await aborted(job_id)


def _task(
    worker: Worker[Any], function: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Task[Any, Any]:
    if isinstance(function, Task):
        if args or kwargs:
            raise TypeError(
                "a streaQ Task carries its own arguments: give them to .enqueue(...), "
                "not to Tracker.enqueue"
            )
        return function
    if isinstance(function, AsyncRegisteredTask | SyncRegisteredTask):
        return Task(args, dict(kwargs), function, worker)
    if isinstance(function, str):
        return worker.enqueue_unsafe(function, *args, **kwargs)
    raise TypeError(
        "Tracker.enqueue(worker, ...) takes a registered streaQ task, its name, or a "
        f"Task made by task.enqueue(...); got {type(function).__name__}"
    )
