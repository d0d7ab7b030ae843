"""What the job subcommands share: their options, their exit code, a summary."""

from __future__ import annotations

import argparse

from ..keys import DEFAULT_PREFIX
from ..state import JobState
from ..status import JobStatus
from ..tracker import Tracker
from ._shared import (
    EXIT_FAILED,
    EXIT_FINISHED,
    EXIT_NO_JOB,
    EXIT_NO_RESULT,
    EXIT_NOT_ENDED,
    add_redis_arguments,
)

_EXIT_CODES = {
    JobStatus.FINISHED: EXIT_FINISHED,
    JobStatus.FAILED: EXIT_FAILED,
    JobStatus.ABORTED: EXIT_NO_RESULT,
    JobStatus.EXPIRED: EXIT_NO_RESULT,
    JobStatus.UNKNOWN: EXIT_NO_JOB,
}


def add_job_arguments(parser: argparse.ArgumentParser, *, redis_timeout: float) -> None:
    """The job id and where to find it."""
    parser.add_argument("job_id", help="the job's id, as its queue gave it")
    add_redis_arguments(parser, redis_timeout=redis_timeout)
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="key and channel prefix (%(default)s)"
    )
    parser.add_argument(
        "--function", default=None, help="the job's function name, if it has its own strategy"
    )


def tracker(args: argparse.Namespace) -> Tracker:
    """The Tracker the options describe."""
    return Tracker(
        args.redis,
        prefix=args.prefix,
        queue_redis=args.queue_redis,
        unreachable_timeout=args.redis_timeout,
    )


def exit_code(state: JobState) -> int:
    """0 finished, 1 failed, 3 not ended, 4 aborted or expired, 5 unknown."""
    return _EXIT_CODES.get(state.status, EXIT_NOT_ENDED)


def summary(state: JobState) -> str:
    """One line: status, progress, attempt, stalled, error, meta."""
    parts = [f"{state.job_id}: {state.status.value}"]
    if state.progress is not None:
        parts.append(f"{state.progress:.0%}")
    if state.attempt > 1:
        parts.append(f"attempt {state.attempt}")
    if state.stalled:
        parts.append("STALLED (no heartbeat)")
    if state.error:
        parts.append(f"error: {state.error}")
    if state.meta:
        parts.append(" ".join(f"{key}={value}" for key, value in state.meta.items()))
    return "  ".join(parts)
