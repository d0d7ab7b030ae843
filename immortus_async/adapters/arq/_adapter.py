"""arq as a queue adapter: what the core asks of it (see :mod:`immortus_async.adapters`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from arq.constants import (
    abort_jobs_ss,
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    retry_key_prefix,
)
from arq.jobs import Job
from redis.asyncio import Redis

from ...exceptions import AbortUnsupported
from .. import ADAPTERS, Aborted, Queued
from .strategy import ArqStrategy

__all__ = ["ArqAdapter"]

# Take a queued job out of arq's queue, or ask the workers to abort a running one,
# in one step. KEYS: the queue, the job, its in-progress and retry keys, arq's
# abort set; ARGV: the job id, now in ms. Returns 1 if it took the job out, else 0.
# A worker that read the job's score before this ran still holds a WATCH on the
# in-progress key: writing it makes that worker's MULTI fail, so it never runs it.
# A job that has ended (no job key) gets no entry in the abort set, where it would
# abort a later job of the same id before it starts.
_ABORT = """
local running = redis.call('EXISTS', KEYS[3]) == 1
if not running and redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('SET', KEYS[3], 'aborted')
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  return 1
end
if running or redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
end
return 0
"""


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

    async def abort(self, target: Any, job_id: str, aborted: Aborted) -> None:
        """Abort through arq's Redis ``target`` (an ``ArqRedis`` pool: its queue).

        A job still in the queue is taken out at once, and recorded ``aborted``:
        no worker runs it, arq keeps no result of it, and its id can be enqueued
        again at once. A running job is put in arq's abort set, as
        ``Job.abort()`` does: a worker with ``allow_abort_jobs=True`` cancels it,
        and it ends ``aborted`` (arq keeps that result for ``keep_result``, and
        refuses the id meanwhile); a worker without it runs the job on.

        Raises:
            AbortUnsupported: ``target`` is not a Redis client.
        """
        if not isinstance(target, Redis):
            raise AbortUnsupported(
                f"arq aborts through its Redis: give the Tracker an arq pool, not "
                f"{type(target).__name__}"
            )
        queue = getattr(target, "default_queue_name", default_queue_name)
        keys = [
            queue,
            job_key_prefix + job_id,
            in_progress_key_prefix + job_id,
            retry_key_prefix + job_id,
            abort_jobs_ss,
        ]
        script = target.register_script(_ABORT)
        if await script(keys=keys, args=[job_id, int(time.time() * 1000)]):
            await aborted(job_id)
