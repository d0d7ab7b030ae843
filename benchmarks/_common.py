"""What every benchmark shares: sizes, percentiles, tables, child processes.

A benchmark module exposes ``TITLE`` and ``async def run(ctx: Context) -> list[Table]``;
its helper processes are roles of the same file (``python benchmarks/x.py ROLE CONFIG``)
that speak JSON lines: events on stdout, commands on stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECRET = "benchmark-secret-0123456789abcdef-0123456789"

# Sizes


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark runs; ``--quick`` and ``--smoke`` shrink them."""

    mode: str
    wake_jobs: int
    browser_jobs: int
    fanout_own: int
    fanout_shared: int
    fanout_rate: int  # own jobs finished per second
    overhead_jobs: int
    cost_jobs: int
    cost_wait: float  # seconds each Redis-cost job runs
    cost_long_wait: float  # a second, longer run of the waiter phases (0: none)
    selectivity_rate: int  # jobs finished per second
    selectivity_seconds: float
    selectivity_watched: int
    peer_jobs: int = 500  # jobs, and as many waiters, per peer and run (peers.py)
    peer_runs: int = 5
    peer_window: float = 1.0  # seconds Redis's commands are counted while waiters wait


SIZES = {
    "full": Sizes("full", 1000, 1000, 10_000, 1000, 2000, 5000, 200, 1.0, 10.0, 2000, 10.0, 10),
    "quick": Sizes("quick", 1000, 500, 2000, 500, 2000, 2000, 100, 1.0, 0.0, 2000, 4.0, 10, 500, 1),
    "smoke": Sizes("smoke", 20, 20, 50, 20, 500, 100, 10, 0.2, 0.0, 500, 0.5, 3, 20, 1, 0.2),
}


@dataclass
class Context:
    """What ``run.py`` hands each benchmark."""

    sizes: Sizes
    redis_url: str
    redis_pid: int | None = None
    profile_dir: Path | None = None  # record py-spy profiles here

    def profile_path(self, name: str) -> Path | None:
        """Where to write the profile called ``name``, or None when not profiling."""
        return self.profile_dir / f"{name}.txt" if self.profile_dir else None


# Statistics


def percentile(sorted_samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already-sorted samples."""
    if not sorted_samples:
        return float("nan")
    rank = max(1, -(-len(sorted_samples) * fraction // 1))  # ceil
    return sorted_samples[int(rank) - 1]


def latency_stats(samples: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max of latencies in seconds."""
    ordered = sorted(samples)
    return {
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else float("nan"),
    }


def ms(seconds: float) -> str:
    """Seconds as milliseconds, three significant figures or so."""
    if seconds != seconds:  # NaN
        return "-"
    value = seconds * 1000
    if value >= 100:
        return f"{value:.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def latency_cells(samples: Sequence[float]) -> list[str]:
    """The p50, p95, p99 and max cells of a latency row."""
    stats = latency_stats(samples)
    return [ms(stats[key]) for key in ("p50", "p95", "p99", "max")]


LATENCY_COLUMNS = ["p50", "p95", "p99", "max"]


# Tables


@dataclass
class Table:
    """One table of results, printed as Markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        """Append a row; every cell is turned into text."""
        self.rows.append([str(cell) for cell in cells])

    def render(self) -> str:
        """The table as Markdown: a heading, the table, the notes as a list."""
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))

        def line(cells: Sequence[str]) -> str:
            padded = (cell.ljust(widths[i]) for i, cell in enumerate(cells))
            return "| " + " | ".join(padded) + " |"

        out = [f"### {self.title}", "", line(self.columns)]
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out += [line(row) for row in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {note}" for note in self.notes]
        return "\n".join(out)


def verdict(ok: bool) -> str:
    """The cell saying whether a target was met."""
    return "yes" if ok else "**no**"


# Processes


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: ours, the package importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Process:
    """A child process; keeps the tail of its stderr for the error message if it fails."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self._drain = asyncio.create_task(self._read_stderr())

    @classmethod
    async def spawn(cls, name: str, *argv: str, env: dict[str, str] | None = None) -> Process:
        """Start ``argv`` with piped stdin, stdout and stderr."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env or child_env(),
            limit=64 * 1024 * 1024,
        )
        return cls(process, name)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr_tail.append(line.decode(errors="replace"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def psutil(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def failure(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"{self.name}: {what}; its stderr ends with:\n{''.join(self.stderr_tail)}"
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; wait for the exit."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._drain


class Child(Process):
    """A benchmark role in a process of its own, speaking JSON lines."""

    @classmethod
    async def start(
        cls, script: str, role: str, config: dict[str, Any] | None = None, **env: str
    ) -> Child:
        """Run ``benchmarks/<script> ROLE`` with this interpreter; ``config`` is its first line."""
        argv = [sys.executable, str(HERE / script), role]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(**env),
            limit=256 * 1024 * 1024,
        )
        child = cls(process, f"{script} {role}")
        assert process.stdin is not None
        process.stdin.write((json.dumps(config or {}) + "\n").encode())
        await process.stdin.drain()
        return child

    async def recv(self, timeout: float = 120.0) -> dict[str, Any]:
        """The child's next event."""
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise self.failure(f"said nothing for {timeout}s") from None
        if not line:
            await self.process.wait()
            await asyncio.sleep(0.05)  # let the stderr reader catch up
            raise self.failure(f"exited with status {self.process.returncode}")
        message: dict[str, Any] = json.loads(line)
        return message

    async def expect(self, event: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for ``event``; any other event is a protocol error."""
        message = await self.recv(timeout)
        if message.get("event") != event:
            raise self.failure(f"sent {message.get('event')!r} where {event!r} was expected")
        return message

    async def send(self, command: str, **data: Any) -> None:
        """Send ``{"command": command, **data}``."""
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"command": command, **data}) + "\n").encode())
        await self.process.stdin.drain()

    async def finish(self, timeout: float = 60.0) -> None:
        """Wait for the child to exit by itself (then make sure it is gone)."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            pass
        await self.stop()
        if self.process.returncode not in (0, -15):
            raise self.failure(f"exited with status {self.process.returncode}")


class BridgeProcess(Process):
    """``immortus-async bridge`` (the real CLI) in a process of its own."""

    @classmethod
    async def launch(
        cls, redis_url: str, *, profile: Path | None = None, extra: Sequence[str] = ()
    ) -> BridgeProcess:
        """Start the bridge on a free port and return once it accepts connections.

        With ``profile``, the bridge runs under ``py-spy record`` writing there.
        """
        port = free_port()
        argv = [sys.executable, "-m", "immortus_async.cli", "--log-level", "WARNING", "bridge"]
        argv += ["--redis", redis_url, "--port", str(port), *extra]
        if profile is not None:
            argv = ["py-spy", "record", "--format", "speedscope", "-o", str(profile), "--", *argv]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(IMMORTUS_SECRET=SECRET),
        )
        bridge = cls(process, "bridge")
        bridge.port = port
        deadline = time.monotonic() + 30
        while True:
            if process.returncode is not None:
                raise bridge.failure("exited while starting")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if time.monotonic() > deadline:
                    raise bridge.failure("did not listen within 30s") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return bridge

    port: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def python_process(self) -> psutil.Process:
        """The bridge's Python process (under py-spy, its child)."""
        proc = self.psutil()
        if "py-spy" in proc.name():
            children = proc.children()
            if children:
                return children[0]
        return proc

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGINT/SIGTERM the bridge (py-spy then writes its profile)."""
        if self.process.returncode is None:
            target = self.python_process()
            target.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout + 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await super().stop(timeout)


# The child's side


Role = Callable[[dict[str, Any], AsyncIterator[dict[str, Any]]], Awaitable[None]]


def child_main(roles: dict[str, Role]) -> None:
    """Entry point of a benchmark file run as a child: ``file.py ROLE``.

    The role gets its configuration (the first line on stdin) and the stream of
    the parent's later commands.
    """
    role = roles[sys.argv[1]]
    raise_open_files_limit()

    async def main() -> None:
        stream = commands()
        config = await anext(stream)
        await role(config, stream)

    asyncio.run(main())


def say(event: str, **data: Any) -> None:
    """Tell the parent ``event`` (a JSON line on stdout)."""
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


async def commands() -> AsyncIterator[dict[str, Any]]:
    """The parent's commands, one JSON object per line on stdin, until it closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield json.loads(line)


async def next_command(stream: AsyncIterator[dict[str, Any]], expected: str) -> dict[str, Any]:
    """The next command from ``stream``, which must be ``expected``."""
    command = await anext(stream)
    if command.get("command") != expected:
        raise RuntimeError(f"got command {command.get('command')!r}, expected {expected!r}")
    return command


async def pace(total: int, rate: float) -> AsyncIterator[list[int]]:
    """Yield indexes ``0..total-1`` in small batches, ``rate`` per second on average.

    Batches of what is due every millisecond or so: a steady stream, not a burst.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    done = 0
    while done < total:
        due = min(total, int((loop.time() - start) * rate) + 1)
        if due > done:
            yield list(range(done, due))
            done = due
        else:
            await asyncio.sleep(max(0.0, start + done / rate - loop.time()))


def cpu_seconds(proc: psutil.Process) -> float:
    """User plus system CPU seconds used by ``proc`` so far."""
    times = proc.cpu_times()
    return float(times.user + times.system)


def rss(proc: psutil.Process) -> int:
    """Resident set size in bytes."""
    return int(proc.memory_info().rss)


# Profiling


class Profile:
    """``py-spy record`` attached to a running process for the duration of a block.

    Writes collapsed stacks (``--format raw``) to ``path``; :func:`summarize` reads them.
    A no-op when ``path`` is None.
    """

    def __init__(self, pid: int, path: Path | None, *, rate: int = 250) -> None:
        self.pid, self.path, self.rate = pid, path, rate
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Profile:
        if self.path is not None:
            binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            self._process = await asyncio.create_subprocess_exec(
                binary, "record", "--pid", str(self.pid), "--format", "raw",
                "--rate", str(self.rate), "-o", str(self.path),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await asyncio.sleep(0.5)  # py-spy attaches
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None:
            if self._process.returncode is None:
                # py-spy stops by itself (and writes) when the target exits.
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(signal.SIGINT)
            await asyncio.wait_for(self._process.wait(), 30)


def summarize(path: Path, top: int = 25) -> str:
    """The functions with the most samples in a py-spy raw profile: own, then total."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    lines = [f"{samples} samples; own time:"]
    for frame, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * count / samples:5.1f}%  {frame}")
    lines.append("total time (own + callees):")
    for frame, count in sorted(total.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * count / samples:5.1f}%  {frame}")
    return "\n".join(lines)
