"""The taskiq adapter: track taskiq tasks with a middleware, read taskiq's own results.

* :class:`TrackingMiddleware` (job side): ``started``, ``finished``, ``failed`` with
  the error text, ``retrying`` when taskiq runs the task again; heartbeats while
  it runs. :func:`tracking` gives a task its :class:`~immortus_async.JobContext`
  through taskiq's dependency injection (``TaskiqDepends(tracking)``).
* :class:`TaskiqStrategy` (``"taskiq"``): a task's state from taskiq-redis's
  result backend and progress records, for tasks run without the middleware; the
  fallback of ``"redis_pub_sub"`` under ``configure(queue_adapter="taskiq")``.
* ``await tracker.enqueue(broker, task, *args, **kwargs)``: taskiq's ``kiq()``,
  then the ``queued`` state; returns taskiq's ``AsyncTaskiqTask``.

Quick start (the worker's module, run with ``taskiq worker tasks:broker``)::

    from taskiq import SimpleRetryMiddleware, TaskiqDepends
    from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

    from immortus_async import JobContext, configure
    from immortus_async.adapters.taskiq import TrackingMiddleware, tracking

    configure(queue_adapter="taskiq")
    broker = ListQueueBroker(URL).with_result_backend(RedisAsyncResultBackend(URL))
    broker.add_middlewares(SimpleRetryMiddleware(), TrackingMiddleware())

    @broker.task(retry_on_error=True)
    async def process_csv(path: str, job: JobContext = TaskiqDepends(tracking)) -> int:
        ...
        await job.update(progress=0.5, rows=500)

Importing this module without taskiq installed raises ImportError with
``pip install 'immortus-async[taskiq]'``.
"""

from __future__ import annotations

from .. import require

require("taskiq")

from collections.abc import Mapping  # noqa: E402
from typing import Any  # noqa: E402

from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask  # noqa: E402
from taskiq.kicker import AsyncKicker  # noqa: E402

from .. import Queued  # noqa: E402
from .middleware import TrackingMiddleware, attempt_of, tracking  # noqa: E402
from .strategy import TaskiqStrategy  # noqa: E402

__all__ = ["TaskiqStrategy", "TrackingMiddleware", "adapter", "attempt_of", "tracking"]


class _TaskiqAdapter:
    """taskiq, as the core sees it (the :class:`~immortus_async.adapters.QueueAdapter`)."""

    name = "taskiq"
    inferred_strategy = "redis_pub_sub"
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
    ) -> Any:
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


adapter = _TaskiqAdapter()
"""The taskiq adapter."""
