"""Helpers shared by the tests: waiting on conditions, never on fixed sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    # Only the arq tests run a worker; the environment without arq imports this too.
    from arq.connections import ArqRedis
    from arq.worker import Worker

T = TypeVar("T")

# One unit for every unavoidable delay, scaled on slow machines: IMMORTUS_TEST_SCALE=3.
SCALE = float(os.environ.get("IMMORTUS_TEST_SCALE", "1"))

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
"""Where tests leave screenshots for people to look at (not in git)."""


async def wait_until(
    condition: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 10.0,
    interval: float = 0.005,
    message: str = "condition",
) -> T:
    """Re-check ``condition`` until it returns something truthy; fail after ``timeout``.

    For state that offers no event to wait on (a TTL passing in Redis, a client
    count); everything that has an event is awaited directly instead.
    """
    deadline = asyncio.get_running_loop().time() + timeout * SCALE
    while True:
        result = condition()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout * SCALE:.1f}s waiting for {message}")
        await asyncio.sleep(interval)


async def run_worker(pool: ArqRedis, functions: Sequence[Any], **settings: Any) -> Worker:
    """Run a real arq worker in this loop until its queue is empty (burst mode, as arq's
    own tests do) and return it; ``settings`` are more ``Worker`` arguments."""
    from arq.worker import Worker

    worker = Worker(
        functions=functions,
        redis_pool=pool,
        burst=True,
        poll_delay=settings.pop("poll_delay", 0),
        handle_signals=False,
        **settings,
    )
    await worker.main()
    return worker


def free_port() -> int:
    """A loopback port free now, for a server that must know its port before it starts
    (another process could take it meanwhile: only where port 0 cannot be used)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Spawned:
    """A command in a process of its own, its output (stdout and stderr together) read
    as it comes: it never blocks on a full pipe, and a test waits for a line of it.

    ``async with await Spawned.start(...) as spawned:`` kills it on the way out if
    the test has not stopped it.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._ended = False
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, *command: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> Spawned:
        """Start ``command``."""
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        """Everything it printed so far."""
        return "\n".join(self.lines)

    async def expect(self, pattern: str, *, timeout: float = 30) -> re.Match[str]:
        """The first line that matches ``pattern``, once it is printed.

        Fails when the process ends, or ``timeout`` seconds pass, without one.
        """
        regex = re.compile(pattern)
        checked = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout * SCALE), self._changed:
                while True:
                    for line in self.lines[checked:]:
                        if found := regex.search(line):
                            return found
                    checked = len(self.lines)
                    if self._ended:
                        break
                    await self._changed.wait()
        raise AssertionError(f"no line matching {pattern!r} in its output:\n{self.output}")

    async def stop(self, signum: int = signal.SIGINT, *, timeout: float = 30) -> int:
        """Send ``signum``, wait for the exit and the end of its output; the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signum)
        async with asyncio.timeout(timeout * SCALE):
            status = await self.process.wait()
            await self._reader
        return status

    async def __aenter__(self) -> Spawned:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self._reader
