"""Run the websocket bridge (browsers follow jobs live) until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from ..keys import DEFAULT_PREFIX
from ..tokens import SECRET_ENV, read_secret
from .server import DEFAULT_REDIS_URL, serve

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bridge's options to ``parser``. The secret is never an option."""
    parser.description = (
        f"Push job states to browsers over websockets. The token signing secret is "
        f"read from ${SECRET_ENV} (at least 32 bytes)."
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS_URL, help="Redis URL (%(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (%(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port, 0 for any (%(default)s)")
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
        "--prefix", default=DEFAULT_PREFIX, help="Redis key and channel prefix (%(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the bridge until SIGINT or SIGTERM, then close it. Returns the exit status."""
    if not args.insecure_no_auth:
        try:
            secret = read_secret()
        except ValueError as exc:
            print(f"immortus-async bridge: ${SECRET_ENV}: {exc}", file=sys.stderr)
            return 2
        if secret is None:
            print(
                f"immortus-async bridge: set ${SECRET_ENV} to the token signing secret "
                "(or pass --insecure-no-auth for development)",
                file=sys.stderr,
            )
            return 2
    try:
        asyncio.run(_serve(args))
    except OSError as exc:
        print(f"immortus-async bridge: {exc}", file=sys.stderr)
        return 1
    return 0


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
    ):
        await stop.wait()
