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

from .. import require

# Before anything imports taskiq: without it, the error says how to install it.
require("taskiq")

from ._adapter import TaskiqAdapter  # noqa: E402
from .middleware import TrackingMiddleware, tracking  # noqa: E402
from .strategy import TaskiqStrategy  # noqa: E402

__all__ = [
    "TaskiqAdapter",
    "TaskiqStrategy",
    "TrackingMiddleware",
    "adapter",
    "tracking",
]

adapter = TaskiqAdapter()
"""The taskiq adapter, as :func:`immortus_async.adapters.load` returns it."""
