"""The arq adapter: ``@tracked`` and :func:`track_worker` (the job side, through arq's
worker hooks), :func:`job_context` (a job's :class:`~immortus_async.JobContext`,
``ctx["immortus"]`` typed), :class:`ArqStrategy` (arq's own records) and the enqueue
helper behind ``Tracker.enqueue(pool, ...)``, which returns arq's ``Job`` (None when
arq refuses a duplicate ``_job_id``). Needs ``pip install 'immortus-async[arq]'``."""

from .. import require

# Before anything imports arq: without it, the error says how to install it.
require("arq")

from ._adapter import ArqAdapter  # noqa: E402
from .strategy import ArqStrategy  # noqa: E402
from .worker import job_context, track_worker, tracked  # noqa: E402

__all__ = ["ArqAdapter", "ArqStrategy", "adapter", "job_context", "track_worker", "tracked"]

adapter = ArqAdapter()
"""The arq adapter, as :func:`immortus_async.adapters.load` returns it."""
