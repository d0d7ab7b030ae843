"""Print a job's state now; the exit code says how it stands (0 finished, 1 failed)."""

from __future__ import annotations

import argparse
import asyncio
import json

from ._jobs import add_job_arguments, exit_code, summary, tracker
from ._shared import EXIT_USAGE, use_queue_adapter

__all__ = ["add_arguments", "run"]

# status answers now: a Redis that does not answer within this is reported.
_REDIS_TIMEOUT = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job to look at, and ``--json`` for the wire form."""
    parser.description = __doc__
    add_job_arguments(parser, redis_timeout=_REDIS_TIMEOUT)
    parser.add_argument("--json", action="store_true", help="print the state as JSON")


def run(args: argparse.Namespace) -> int:
    """Read the state once and print it."""
    if not use_queue_adapter(args, "immortus-async status"):
        return EXIT_USAGE
    return asyncio.run(_status(args))


async def _status(args: argparse.Namespace) -> int:
    async with tracker(args) as reader:
        state = await reader.status(args.job_id, function=args.function)
    print(json.dumps(state.to_dict(), indent=2) if args.json else summary(state))
    return exit_code(state)
