"""Helpers shared by the tests: waiting on conditions, never on fixed sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    # Only the arq tests run a worker; the environment without arq imports this too.
    from arq.connections import ArqRedis
    from arq.worker import Worker

from redis.asyncio.connection import Connection

from immortus_async import JobState, JobStatus, Tracker, TrackerClosed
from immortus_async._buffer import StateBuffer
from immortus_async._pubsub import PubSubHub
from immortus_async._sharded import ShardedHub

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


async def closed_while_cancelled(aclose: Callable[[], Awaitable[None]]) -> bool:
    """Run ``aclose`` in a task that is cancelled as it first waits (a closer whose own
    caller gives up); whether that task ended cancelled, as it must."""

    async def close() -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()  # delivered at the first await of aclose
        await aclose()

    closer = asyncio.create_task(close())
    await asyncio.wait([closer], timeout=10 * SCALE)
    return closer.cancelled()


async def hub_closed_while_cancelled(hub: PubSubHub | ShardedHub) -> None:
    """Close ``hub``, which has one waiter, in a task cancelled as it waits: that task
    ends cancelled, and the waiter fails with TrackerClosed all the same."""
    buffer = StateBuffer()
    await hub.subscribe("{c}x", buffer, bytes)
    assert await closed_while_cancelled(hub.aclose)
    try:
        async with asyncio.timeout(10 * SCALE):
            await buffer.get()
    except TrackerClosed:
        return
    raise AssertionError("the hub's waiter was not told it closed")


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


class Watcher:
    """Collects every state tracker.watch yields for one job, from before the job runs."""

    def __init__(self, tracker: Tracker, job_id: str) -> None:
        self.states: list[JobState] = []
        self._first = asyncio.Event()
        self._task = asyncio.create_task(self._run(tracker, job_id))

    async def _run(self, tracker: Tracker, job_id: str) -> None:
        async for state in tracker.watch(job_id):
            self.states.append(state)
            self._first.set()

    async def subscribed(self) -> Watcher:
        await asyncio.wait_for(self._first.wait(), 10 * SCALE)
        return self

    async def finished(self) -> list[JobState]:
        await asyncio.wait_for(self._task, 20 * SCALE)
        return self.states

    def has(self, status: JobStatus, **fields: Any) -> bool:
        return any(
            s.status is status and all(getattr(s, k) == v for k, v in fields.items())
            for s in self.states
        )


def steps(states: list[JobState]) -> list[tuple[str, int]]:
    """(status, attempt) of each state, repeats folded."""
    folded: list[tuple[str, int]] = []
    for state in states:
        step = (state.status.value, state.attempt)
        if not folded or folded[-1] != step:
            folded.append(step)
    return folded


def enqueue_and_work(folder: Path, env: dict[str, str], worker: Sequence[str]) -> list[str]:
    """Run the example's ``enqueue.py``, then, once it has enqueued, ``worker`` (a
    command that works until the queue is empty); return what the script printed
    after its ``enqueued <id>`` line."""
    with subprocess.Popen(
        [sys.executable, "enqueue.py"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as script:
        assert script.stdout is not None
        assert script.stdout.readline().startswith("enqueued ")
        run = subprocess.run(
            list(worker),
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode == 0, run.stderr
        out, err = script.communicate(timeout=30)
    assert script.returncode == 0, err
    return out.splitlines()


class WriteEndingAsCancelled(Connection):
    """Once armed, a connection whose next write completes only once the task that
    sent it is being cancelled: the two come together, as when a task that reads
    Redis is stopped (its client left, its token expired, its owner closes it).
    redis-py sends through ``asyncio.wait_for`` when the connection has a
    ``socket_timeout``, and Python 3.11's drops that cancellation (it returns the
    write's result). Give the client a ``socket_timeout``: only such writes are
    held (pub/sub connections made from the client have none), the next one of any
    such connection once armed."""

    armed: ClassVar[bool] = False
    held: ClassVar[asyncio.Event]

    @classmethod
    def arm(cls) -> asyncio.Event:
        """Hold the next write of any such connection; the event is set once it is held."""
        cls.held = asyncio.Event()
        cls.armed = True
        return cls.held

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._sender = asyncio.current_task()  # wait_for writes in a task of its own
        await super().send_packed_command(command, check_health)

    async def _send_packed_command(self, command: Any) -> None:
        if type(self).armed and self.socket_timeout is not None:
            type(self).armed = False
            sender = self._sender
            assert sender is not None
            self.held.set()
            # sleep(0) between looks: the write ends in the very loop turn that
            # delivers the cancellation, before the sender resumes.
            await wait_until(lambda: sender.cancelling(), interval=0, message="the cancellation")
        await super()._send_packed_command(command)
