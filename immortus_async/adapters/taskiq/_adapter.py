"""taskiq as a queue adapter: what the core asks of it (see :mod:`immortus_async.adapters`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask, AsyncTaskiqTask
from taskiq.kicker import AsyncKicker

from ...exceptions import AbortUnsupported
from .. import ADAPTERS, Aborted, Queued
from .strategy import TaskiqStrategy

__all__ = ["TaskiqAdapter"]


class TaskiqAdapter:
    """taskiq, as the core sees it (the :class:`~immortus_async.adapters.QueueAdapter`)."""

    name = "taskiq"
    inferred_strategy = ADAPTERS["taskiq"].inferred_strategy
    records = TaskiqStrategy

    def accepts(self, target: object) -> bool:
        """True for a taskiq broker."""
        return isinstance(target, AsyncBroker)

    async def enqueue(
        self,
        target: Any,
        function: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        queued: Queued,
    ) -> AsyncTaskiqTask[Any]:
        """``kiq()`` the task (a decorated task, a kicker or a task name) on the broker
        ``target``, then record ``queued``; return taskiq's ``AsyncTaskiqTask``.

        Raises:
            TypeError: ``function`` is none of those.
            taskiq.exceptions.SendTaskError: the broker did not take the task
                (nothing is recorded).
        """
        kicker = _kicker(target, function)
        task = await kicker.kiq(*args, **kwargs)
        await queued(task.task_id, kicker.task_name)
        return task

    async def abort(self, target: Any, job_id: str, aborted: Aborted) -> None:
        """Raises: taskiq cannot abort a task.

        taskiq has no cancellation, of a queued task nor of a running one, and a
        middleware cannot keep a received task from running; so nothing is
        pretended: a task that must stop early checks a flag of its own.
        """
        raise AbortUnsupported(
            "taskiq has no way to abort a task, queued or running: a task that must "
            "stop early has to check a flag of its own"
        )


def _kicker(broker: AsyncBroker, function: Any) -> AsyncKicker[Any, Any]:
    if isinstance(function, AsyncKicker):
        return function.with_broker(broker)
    if isinstance(function, AsyncTaskiqDecoratedTask):
        return function.kicker().with_broker(broker)
    if isinstance(function, str):
        found = broker.find_task(function)
        if found is not None:
            return found.kicker()
        # A task this process does not import: the worker knows it by name.
        return AsyncKicker(task_name=function, broker=broker, labels={})
    raise TypeError(
        "tracker.enqueue(broker, task, ...) takes a taskiq task, its kicker or its name, "
        f"got {type(function).__name__}"
    )
