"""What every ``immortus-async`` command shares: its exit codes, its Redis and queue options.

The same table for every command:

====  ===========================================================================
code  meaning
====  ===========================================================================
0     the job finished (``status``, ``watch``); a server stopped cleanly
1     the job failed (``status``, ``watch``); the bridge could not listen
2     usage: a bad option or value, a missing or short ``$IMMORTUS_SECRET``
3     the job has not ended: still queued, started or retrying (``status``), or
      still so when ``watch --timeout`` ran out
4     the job ended without a result: aborted, or expired (its record is gone)
5     no such job: never seen, or lost by Redis
69    could not reach Redis (``EX_UNAVAILABLE`` of ``sysexits.h``)
77    Redis refused access: a wrong password, an ACL user without the keys or
      channels (``EX_NOPERM``)
130   interrupted (Ctrl-C)
141   standard output was closed by its reader (``watch ... | head``), as a
      process killed by ``SIGPIPE`` reports it to its shell
====  ===========================================================================
"""

from __future__ import annotations

import argparse
import os
import sys

from redis.connection import parse_url

from .. import adapters, config

EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_ENDED = 3
EXIT_NO_RESULT = 4
EXIT_NO_JOB = 5
EXIT_UNAVAILABLE = 69
EXIT_NO_PERMISSION = 77
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_URL_ENV = "REDIS_URL"
QUEUE_REDIS_URL_ENV = "QUEUE_REDIS_URL"


def redis_url(text: str) -> str:
    """An argparse type: ``text`` if redis-py can parse it as a Redis URL
    (``redis+cluster://host:port``: a Redis Cluster, from one of its nodes)."""
    try:
        parse_url(text.replace("+cluster://", "://", 1))  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None
    return text


def port(text: str) -> int:
    """An argparse type: a TCP port number, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a positive number of seconds, got {text!r}")
    return value


def add_redis_arguments(parser: argparse.ArgumentParser, *, redis_timeout: float) -> None:
    """``--redis``, ``--queue-redis`` (from the environment by default), ``--queue-adapter``,
    ``--redis-timeout``."""
    parser.add_argument(
        "--redis",
        type=redis_url,
        default=os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL,
        metavar="URL",
        help=f"the Redis that holds the tracking records; redis+cluster://HOST:PORT "
        f"for a Redis Cluster (default: ${REDIS_URL_ENV}, else {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--queue-redis",
        type=redis_url,
        default=os.environ.get(QUEUE_REDIS_URL_ENV) or None,
        metavar="URL",
        help=f"the queue's own Redis, when tracking lives on another one "
        f"(default: ${QUEUE_REDIS_URL_ENV}, else the same as --redis)",
    )
    parser.add_argument(
        "--queue-adapter",
        choices=sorted(adapters.ADAPTERS),
        default=None,
        help="the queue whose own records answer for jobs with no record of ours, as "
        f"configure(queue_adapter=...) takes it (default: {adapters.DEFAULT}, where it is "
        "installed)",
    )
    parser.add_argument(
        "--redis-timeout",
        type=seconds,
        default=redis_timeout,
        metavar="SECONDS",
        help=f"how long an unreachable Redis is waited for before giving up "
        f"with exit code {EXIT_UNAVAILABLE} (%(default)s)",
    )


def use_queue_adapter(args: argparse.Namespace, prog: str) -> bool:
    """Make ``--queue-adapter``, if given, this process's ``configure(queue_adapter=...)``.

    False, with one line on stderr that gives the install command, when its queue
    is not installed here (the command then exits with :data:`EXIT_USAGE`).
    """
    name: str | None = args.queue_adapter
    if name is None:
        return True
    try:
        adapters.require(name)
    except ImportError as exc:
        print(f"{prog}: --queue-adapter {name}: {exc}", file=sys.stderr)
        return False
    config.configure(queue_adapter=name)
    return True
