"""arq as a queue adapter: what the core asks of it (see :mod:`immortus_async.adapters`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arq.jobs import Job

from .. import ADAPTERS, Queued
from .strategy import ArqStrategy

__all__ = ["ArqAdapter"]


class ArqAdapter:
    """arq: jobs enqueued on an ``arq.ArqRedis`` pool, read back from arq's records."""

    name = "arq"
    inferred_strategy = ADAPTERS["arq"].inferred_strategy
    records = ArqStrategy

    def accepts(self, target: object) -> bool:
        """True for an arq pool (an ``ArqRedis``), or a wrapper that enqueues like one."""
        return callable(getattr(target, "enqueue_job", None))

    async def enqueue(
        self,
        target: Any,
        function: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        queued: Queued,
    ) -> Job | None:
        """``pool.enqueue_job(function, *args, **kwargs)``, then the queued state.

        Returns arq's ``Job``, or None (nothing recorded) when arq refuses a
        duplicate ``_job_id``.
        """
        job: Job | None = await target.enqueue_job(function, *args, **kwargs)
        if job is None:
            return None
        await queued(job.job_id, function)
        return job
