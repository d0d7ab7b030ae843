"""The ``immortus-async`` command: one subcommand per module.

A subcommand is a module with a docstring (its help), ``add_arguments(parser)``
and ``run(args) -> int``; add it to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from .bridge import cli as bridge_cli
from .commands import status, watch
from .demo import cli as demo_cli

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: dict[str, ModuleType] = {
    "demo": demo_cli,
    "bridge": bridge_cli,
    "status": status,
    "watch": watch,
}
"""Subcommand name -> the module that implements it."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line, one subparser per :data:`COMMANDS` entry."""
    parser = argparse.ArgumentParser(prog="immortus-async")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(%(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        summary = (module.__doc__ or "").strip().splitlines()[0]
        command = commands.add_parser(name, help=summary)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), configure logging, run the subcommand."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
