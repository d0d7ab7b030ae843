"""Follow a job with a live progress bar until it ends; exit codes as for status."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from typing import TextIO

import anyio

from ..exceptions import JobNotFound
from ..state import JobState
from ..status import JobStatus
from ._jobs import add_job_arguments, exit_code, summary, tracker
from ._shared import EXIT_NO_JOB, EXIT_NOT_ENDED, EXIT_USAGE, seconds, use_queue_adapter

__all__ = ["add_arguments", "render_bar", "run"]

# A watch rides out a Redis restart or failover this long (the Tracker's default).
_REDIS_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job to follow, and how long to wait."""
    parser.description = __doc__
    add_job_arguments(parser, redis_timeout=_REDIS_TIMEOUT)
    parser.add_argument(
        "--timeout", type=seconds, default=None, help="give up after this many seconds"
    )


def render_bar(state: JobState, width: int) -> str:
    """``[#####-----]  50%  started  rows=5``, cut to ``width`` characters."""
    cells = max(10, min(40, width // 3))
    filled = round((state.progress or 0.0) * cells)
    bar = f"[{'#' * filled}{'-' * (cells - filled)}]"
    return f"{bar} {summary(state)}"[:width]


def run(args: argparse.Namespace) -> int:
    """Follow the job; on a terminal, redraw one line; elsewhere, print each change."""
    if not use_queue_adapter(args, "immortus-async watch"):
        return EXIT_USAGE
    try:
        return asyncio.run(_watch(args, sys.stdout))
    except JobNotFound as exc:
        print(f"immortus-async watch: {exc}", file=sys.stderr)
        return EXIT_NO_JOB
    except TimeoutError:
        print(f"immortus-async watch: still running after {args.timeout}s", file=sys.stderr)
        return EXIT_NOT_ENDED


async def _watch(args: argparse.Namespace, out: TextIO) -> int:
    live = out.isatty()
    async with tracker(args) as reader:
        # completed()'s checks (unknown job, timeout) with watch()'s every change.
        first = await reader.status(args.job_id, function=args.function)
        if first.status is JobStatus.UNKNOWN:
            raise JobNotFound(args.job_id)
        # anyio and not asyncio.timeout, as in Tracker.completed: a deadline that
        # comes as a redis-py write completes is lost by asyncio.wait_for on
        # Python 3.11, and the watch would go on past --timeout; the scope
        # cancels again at each await.
        with anyio.fail_after(args.timeout):
            async for state in reader.watch(args.job_id, function=args.function):
                if live:
                    width = shutil.get_terminal_size().columns - 1
                    out.write("\r" + render_bar(state, width).ljust(width))
                else:
                    out.write(summary(state) + "\n")
                out.flush()
    if live:
        out.write("\n")
    return exit_code(state)
