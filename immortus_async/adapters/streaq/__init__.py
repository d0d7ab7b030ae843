"""The streaQ adapter: track streaQ tasks through its middleware, read streaQ's records.

* :func:`track_worker` (job side): registers a task middleware on a
  ``streaq.Worker``: ``started``, ``finished``, ``failed`` with the error text,
  ``retrying`` on ``StreaqRetry``, and after a cancellation what streaQ records
  (``aborted``, a timeout, a retry); heartbeats while a task runs.
  :func:`job_context` gives a task its :class:`~immortus_async.JobContext`.
* :class:`StreaqStrategy` (``"streaq"``): a task's state from streaQ's own
  records, for tasks run without the middleware or ended by streaQ without
  running; the fallback of ``"redis_pub_sub"`` under
  ``configure(queue_adapter="streaq")``.
* ``await tracker.enqueue(worker, task, *args, **kwargs)``: streaQ's enqueue,
  then the ``queued`` state; returns streaQ's ``Task``.

Importing this module without streaQ installed raises ImportError with
``pip install 'immortus-async[streaq]'``.
"""

from __future__ import annotations

from .. import require

# Before anything imports streaQ: without it, the error says how to install it.
require("streaq")

from ._adapter import StreaqAdapter  # noqa: E402
from .strategy import StreaqStrategy  # noqa: E402
from .worker import job_context, track_worker  # noqa: E402

__all__ = ["StreaqAdapter", "StreaqStrategy", "adapter", "job_context", "track_worker"]

adapter = StreaqAdapter()
"""The streaQ adapter, as :func:`immortus_async.adapters.load` returns it."""
