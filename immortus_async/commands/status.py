"""Print a job's state now; exit 0 if finished, 1 if failed, 2 otherwise."""

from __future__ import annotations

import argparse
import asyncio
import json

from ..tracker import Tracker
from ._jobs import add_job_arguments, exit_code, summary

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job to look at, and ``--json`` for the wire form."""
    parser.description = __doc__
    add_job_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the state as JSON")


def run(args: argparse.Namespace) -> int:
    """Read the state once and print it."""
    return asyncio.run(_status(args))


async def _status(args: argparse.Namespace) -> int:
    async with Tracker(args.redis, prefix=args.prefix) as tracker:
        state = await tracker.status(args.job_id, function=args.function)
    print(json.dumps(state.to_dict(), indent=2) if args.json else summary(state))
    return exit_code(state)
