"""Start the demo's pieces, say where they are, and stop every one of them on Ctrl-C.

One process runs the page (uvicorn), the bridge and the arq worker on one event
loop; Redis, when the demo starts its own, is a child process (see
:class:`~immortus_async.RedisServer`). They stop in the reverse order of their
start, Redis last, so that nothing is left running and no port stays open.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import shutil
import signal
import socket
import sys
from contextlib import AsyncExitStack
from typing import TextIO

import uvicorn
from arq.connections import RedisSettings, create_pool
from arq.worker import Worker
from redis.exceptions import RedisError

from ..bridge import serve
from ..embedded import RedisServer
from ..tracker import Tracker
from .jobs import FUNCTIONS
from .web import create_app

__all__ = ["HOST", "QUEUE", "main"]

logger = logging.getLogger("immortus_async.demo")

HOST = "127.0.0.1"
"""The demo listens on loopback only: its endpoint enqueues jobs for anyone who asks."""

QUEUE = "immortus-demo:queue"
"""The demo's arq queue, so that on a Redis of your own no other worker takes its jobs."""


def main(*, port: int, redis_url: str | None = None, out: TextIO = sys.stdout) -> int:
    """Run the demo until SIGINT or SIGTERM.

    Args:
        port: the page's port on :data:`HOST` (0: any free port).
        redis_url: a Redis to use; None starts a private one.
        out: where the addresses and progress messages go.

    Returns:
        0 after a clean stop; 1 when it could not start (the port is taken, no
        Redis server to run or reach) or a part of it stopped on its own, with the
        reason on stderr.
    """
    try:
        listener = _listen(port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = f"port {port} on {HOST} is already in use by another program"
        else:
            reason = f"cannot listen on {HOST}:{port} ({exc.strerror or exc})"
        print(
            f"immortus-async demo: {reason}; choose another port with --port "
            f"(e.g. --port {port + 1}), or --port 0 for any free port",
            file=sys.stderr,
        )
        return 1
    redis: RedisServer | None = None
    try:
        if redis_url is None:
            try:
                redis = RedisServer()
                # Started before the event loop: a Ctrl-C meanwhile still reaches the
                # finally below, which stops it.
                redis.start()
            except (FileNotFoundError, RuntimeError) as exc:
                print(f"immortus-async demo: cannot start Redis: {exc}", file=sys.stderr)
                return 1
            redis_url = redis.url
            where = "bundled Valkey" if shutil.which("redis-server") is None else "redis-server"
            redis_label = f"{redis_url}  (private: {where}, {redis.binary})"
        else:
            redis_label = f"{redis_url}  (yours: the demo's jobs use the queue {QUEUE})"
        status = asyncio.run(_serve(listener, redis_url, redis_label, out))
    except (RedisError, OSError) as exc:
        print(f"immortus-async demo: Redis at {redis_url}: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 0  # Ctrl-C while starting: the finally stops what had started
    finally:
        listener.close()
        if redis is not None:
            redis.close()
    print("Stopped: the page, the bridge, the worker and Redis are down.", file=out, flush=True)
    return status


def _listen(port: int) -> socket.socket:
    """A listening socket on :data:`HOST`, taken before anything starts, so that a
    port in use is reported at once; uvicorn serves on it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Lets a restarted demo take its port back while the last run's connections
    # sit in TIME_WAIT; Linux still refuses a port that another socket listens on.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


async def _serve(listener: socket.socket, redis_url: str, redis_label: str, out: TextIO) -> int:
    """Run everything until a signal (0), or until the worker or the page stops (1)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    port = listener.getsockname()[1]
    page_url = f"http://{HOST}:{port}/"
    # A secret for this run only: the page gets a signed token per job, as a real
    # application's would, and nothing outlives the demo.
    secret = secrets.token_urlsafe(32)
    async with AsyncExitStack() as stack:
        pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=QUEUE)
        stack.push_async_callback(pool.aclose)
        tracker = await stack.enter_async_context(Tracker(pool, secret=secret))
        origins = [f"http://{HOST}:{port}", f"http://localhost:{port}"]
        bridge = await stack.enter_async_context(
            serve(redis_url, HOST, 0, secret=secret, allowed_origins=origins)
        )
        bridge_url = bridge.url.replace("ws://", "http://")

        worker = Worker(
            functions=FUNCTIONS,
            redis_settings=RedisSettings.from_dsn(redis_url),
            queue_name=QUEUE,
            handle_signals=False,  # the demo stops it, with everything else
            poll_delay=0.1,
        )
        working = asyncio.create_task(worker.async_run(), name="arq worker")
        stack.push_async_callback(_stop_worker, worker, working)

        config = uvicorn.Config(
            create_app(tracker, pool, bridge_url),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        web = uvicorn.Server(config)
        serving = asyncio.create_task(web.serve(sockets=[listener]), name="web page")
        stack.push_async_callback(_stop_web, web, serving)

        names = ", ".join(function.__name__ for function in FUNCTIONS)
        print(
            "immortus-async demo\n"
            f"  Redis   {redis_label}\n"
            f"  worker  arq, queue {QUEUE}: {names}\n"
            f"  bridge  {bridge.url}  (tokens signed with a secret made for this run)\n"
            f"  page    {page_url}\n"
            f"\nOpen {page_url} in a browser. Ctrl-C stops everything.",
            file=out,
            flush=True,
        )
        stopping = asyncio.create_task(stop.wait(), name="Ctrl-C")
        done, _ = await asyncio.wait(
            [stopping, working, serving], return_when=asyncio.FIRST_COMPLETED
        )
        stopping.cancel()
        for task in done - {stopping}:
            # The worker or the web server ended by itself: say why, then stop the rest.
            error = None if task.cancelled() else task.exception()
            logger.error("the %s stopped: %r; stopping the demo", task.get_name(), error)
        print("Stopping...", file=out, flush=True)
    return 0 if stopping in done else 1


async def _stop_worker(worker: Worker, working: asyncio.Task[None]) -> None:
    # close() cancels running jobs (each records how it ended) and closes arq's pool.
    await worker.close()
    await asyncio.wait([working])


async def _stop_web(web: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    web.should_exit = True
    await asyncio.wait([serving])
