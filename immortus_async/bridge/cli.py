"""Run the websocket bridge (browsers follow jobs live) until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys

from ..commands._shared import (
    EXIT_FAILED,
    EXIT_USAGE,
    add_redis_arguments,
    port,
    use_queue_adapter,
)
from ..exceptions import RedisUnavailable
from ..keys import DEFAULT_PREFIX
from ..tokens import SECRET_ENV, read_secret
from .http import check_metrics_token
from .server import serve

__all__ = ["add_arguments", "run"]

# Like the secret, never an option: a command line is visible to every user of the host.
_METRICS_TOKEN_ENV = "IMMORTUS_METRICS_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bridge's options to ``parser``. The secret is never an option."""
    parser.description = (
        f"Push job states to browsers over websockets. The token signing secret is "
        f"read from ${SECRET_ENV} (at least 32 bytes). With ${_METRICS_TOKEN_ENV} set, "
        "GET /metrics serves Prometheus metrics to requests with "
        "'Authorization: Bearer <that token>'."
    )
    # The bridge's own default: how long start-up, /verify and /healthz wait on Redis.
    add_redis_arguments(parser, redis_timeout=5.0)
    parser.add_argument("--host", default="127.0.0.1", help="interface (%(default)s)")
    parser.add_argument("--port", type=port, default=8765, help="port, 0 for any (%(default)s)")
    parser.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed to connect, e.g. https://app.example; repeatable; "
        "'*' allows any",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="follow any job without a token (development only)",
    )
    parser.add_argument(
        "--allow-abort",
        action="store_true",
        help="take abort requests for a job (the websocket's abort message, "
        "POST /jobs/<job_id>/abort), authorised by the job's token",
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="Redis key and channel prefix (%(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the bridge until SIGINT or SIGTERM, then close it. Returns the exit status."""
    if not use_queue_adapter(args, "immortus-async bridge"):
        return EXIT_USAGE
    if not args.insecure_no_auth:
        try:
            secret = read_secret()
        except ValueError as exc:
            print(f"immortus-async bridge: ${SECRET_ENV}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if secret is None:
            print(
                f"immortus-async bridge: set ${SECRET_ENV} to the token signing secret "
                "(or pass --insecure-no-auth for development)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    args.metrics_token = os.environ.get(_METRICS_TOKEN_ENV) or None
    try:
        check_metrics_token(args.metrics_token)
    except (ValueError, ImportError) as exc:
        print(f"immortus-async bridge: ${_METRICS_TOKEN_ENV}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _tune_garbage_collector()
    try:
        asyncio.run(_serve(args))
    except RedisUnavailable:
        raise  # an OSError too, but reported as every command reports it: by main()
    except OSError as exc:  # cannot listen: address in use, not allowed
        print(f"immortus-async bridge: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


# Young collections every 20,000 net allocations instead of CPython's 700: see below.
_GC_THRESHOLDS = (20_000, 10, 10)


def _tune_garbage_collector() -> None:
    """Fit the collector to a server whose heap is thousands of long-lived connections.

    Each websocket connection keeps ~130 objects the collector tracks; at 10,000
    connections a full collection walks over a million of them and pauses every
    client for hundreds of milliseconds, and CPython's default (a young collection
    every 700 allocations) runs one every few thousand frames. A bridge process
    measured over the fan-out benchmark spent 6.9-7.6 s in the collector with 16
    full collections and pauses up to 970 ms; with these thresholds 1.1 s, none
    full, at most 128 ms. Objects made while starting (modules, the parser) are
    never garbage: ``gc.freeze()`` takes them out of every collection. Only the
    bridge's own process does this; ``serve()`` in an application leaves its
    collector alone.
    """
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(
        args.redis,
        args.host,
        args.port,
        prefix=args.prefix,
        insecure_no_auth=args.insecure_no_auth,
        allowed_origins=args.allowed_origin,
        allow_abort=args.allow_abort,
        queue_redis=args.queue_redis,
        redis_timeout=args.redis_timeout,
        metrics_token=args.metrics_token,
    ):
        await stop.wait()
