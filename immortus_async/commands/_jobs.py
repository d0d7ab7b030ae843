"""What the job subcommands share: their Redis options, the exit code, a summary."""

from __future__ import annotations

import argparse
import os

from ..keys import DEFAULT_PREFIX
from ..state import JobState
from ..status import JobStatus

EXIT_FINISHED, EXIT_FAILED, EXIT_OTHER = 0, 1, 2


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The job id and where to find it."""
    parser.add_argument("job_id", help="the job's id (arq's job id)")
    parser.add_argument(
        "--redis",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis URL (default: $REDIS_URL, else %(default)s)",
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="key and channel prefix (%(default)s)"
    )
    parser.add_argument(
        "--function", default=None, help="the job's function name, if it has its own strategy"
    )


def exit_code(state: JobState) -> int:
    """0 for finished, 1 for failed, 2 for anything else."""
    if state.status is JobStatus.FINISHED:
        return EXIT_FINISHED
    if state.status is JobStatus.FAILED:
        return EXIT_FAILED
    return EXIT_OTHER


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
