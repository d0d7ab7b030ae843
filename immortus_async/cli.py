"""The ``immortus-async`` command: one subcommand per module.

A subcommand is a module with a docstring (its help), ``add_arguments(parser)``
and ``run(args) -> int``; add it to :data:`COMMANDS`. Every failure a user can
cause or meet (a bad option, a Redis that cannot be reached, a reader that
closes the pipe early) ends in one line on stderr and an exit code of its own:
the table is in :mod:`immortus_async.commands._shared`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from types import ModuleType
from typing import NoReturn

from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import __version__
from .bridge import cli as bridge_cli
from .commands import status, watch
from .commands._shared import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_NO_PERMISSION,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from .demo import cli as demo_cli
from .exceptions import ImmortusError, RedisUnavailable, SubscriptionRefused

__all__ = ["COMMANDS", "build_parser", "log_level", "main"]

COMMANDS: dict[str, ModuleType] = {
    "demo": demo_cli,
    "bridge": bridge_cli,
    "status": status,
    "watch": watch,
}
"""Subcommand name -> the module that implements it."""

_LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
# A server logs what it does; a command that prints its answer stays quiet unless
# asked, so that its answer or its one line of failure is all it prints.
_QUIET_COMMANDS = {"status", "watch"}

# What Redis answers when it is reached but refuses: a wrong password, an ACL user
# without the commands, keys or channels it needs.
_REFUSALS = (AuthenticationError, NoPermissionError, SubscriptionRefused)


class _Parser(argparse.ArgumentParser):
    """Reports a usage error in one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line, one subparser per :data:`COMMANDS` entry.

    ``--log-level`` goes before or after the subcommand.
    """
    parser = _Parser(prog="immortus-async")
    log_help = "(default: WARNING for status and watch, INFO for the others)"
    parser.add_argument("--log-level", choices=_LOG_LEVELS, help=log_help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # After the subcommand, --log-level sets the level only when given, so that it
    # does not undo one given before.
    common = _Parser(add_help=False)
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=_LOG_LEVELS, help=log_help
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        summary = (module.__doc__ or "").strip().splitlines()[0]
        command = commands.add_parser(name, help=summary, parents=[common])
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def log_level(args: argparse.Namespace) -> str:
    """The level of the parsed command line: the one given, else the command's own."""
    given: str | None = args.log_level
    return given or ("WARNING" if args.command in _QUIET_COMMANDS else "INFO")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), configure logging, run the subcommand.

    Returns the exit code; a Redis that cannot be reached (69) or refuses access
    (77) is reported in one line, whichever command met it.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=log_level(args), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    prog = f"{parser.prog} {args.command}"
    try:
        code: int = args.run(args)
    except (RedisUnavailable, *_REFUSALS, RedisConnectionError, RedisTimeoutError) as exc:
        refused = _refused(exc)
        if isinstance(exc, ImmortusError):
            line = str(exc)
        else:
            # redis-py's own message names the host and port, never the password.
            line = f"{'Redis refused access' if refused else 'cannot reach Redis'}: {exc}"
        print(f"{prog}: {line}", file=sys.stderr)
        return EXIT_NO_PERMISSION if refused else EXIT_UNAVAILABLE
    except BrokenPipeError:
        # The reader of stdout has gone (`watch ... | head`): stop quietly, as a
        # writer killed by SIGPIPE does; stdout now leads nowhere, so that Python's
        # flush at exit does not fail on it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


def _refused(exc: BaseException) -> bool:
    """True if Redis refused rather than could not be reached, here or in a cause
    (a ``RedisUnavailable`` that gave up on a wrong password)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, _REFUSALS):
            return True
        cause = cause.__cause__
    return False


if __name__ == "__main__":
    sys.exit(main())
