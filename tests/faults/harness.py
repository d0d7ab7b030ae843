"""The fault suite's harness: jobs, waiters of every kind, the processes, the tally.

A scenario enqueues a few hundred short jobs (tracked ones and their untracked
twins), subscribes every waiter (``Tracker.completed``, ``Tracker.watch`` and
websocket clients of a bridge process) before any job runs, starts real arq
worker processes, causes its fault while the jobs run, then waits, up to a
bounded deadline after the fault, for every waiter's answer. :class:`Tally`
holds the counts it asserts on and prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from arq.connections import ArqRedis, create_pool
from arq.jobs import Job
from arq.worker import JobExecutionFailed
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from immortus_async import (
    JobLost,
    JobState,
    JobStatus,
    Keys,
    RedisServer,
    Tracker,
    mint_token,
)

from ..utils import SCALE, Spawned, free_port, wait_until
from .worker import READY, RESUMED, RETRY, RETRY_ON_ERROR, settings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "fault-suite-secret-0123456789abcdef"
SOAK = os.environ.get("IMMORTUS_SOAK") == "1"
"""The longer run: more jobs, and each fault repeated."""

JOBS = 1000 if SOAK else 200
"""Tracked jobs per scenario; as many untracked twins run beside them."""
REPEAT = 3 if SOAK else 1
"""How many times a scenario causes its fault."""
IN_PROGRESS = 3.0 * SCALE
"""Seconds a job's arq in-progress key lives: when a fault leaves it behind with no
worker running the job (a killed worker, a start whose reply Redis never sent),
arq runs the job again after that long (its default is the timeout plus 10 s)."""
SETTLE = 12.0 * SCALE
"""Seconds after the last fault by which every waiter must have its answer."""

Kind = Literal["completed", "watch", "bridge"]
KINDS: tuple[Kind, ...] = ("completed", "watch", "bridge")


def now() -> float:
    """The loop's clock, which every timestamp of a run uses."""
    return asyncio.get_running_loop().time()


# The jobs


@dataclass(frozen=True, slots=True)
class Plan:
    """One job and the outcome it is known to have: ``ValueError("bad <index>")``
    when ``fail``, else ``index * 2``."""

    index: int
    tracked: bool
    fail: bool

    @property
    def job_id(self) -> str:
        """``t<index>`` for a tracked job, ``u<index>`` for its untracked twin."""
        return f"{'t' if self.tracked else 'u'}{self.index}"

    @property
    def error(self) -> str:
        """The error text of the known failure."""
        return f"ValueError: bad {self.index}"


def plans(count: int) -> list[Plan]:
    """``count`` tracked jobs, each followed by its twin; one in seven fails."""
    return [
        Plan(index, tracked, fail=index % 7 == 3)
        for index in range(count)
        for tracked in (True, False)
    ]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What arq recorded for a job: ``success`` and its result or exception."""

    success: bool
    result: Any

    def expected(self, plan: Plan) -> bool:
        """True when this is the outcome the job is known to have."""
        if plan.fail:
            return (
                not self.success
                and isinstance(self.result, ValueError)
                and str(self.result) == f"bad {plan.index}"
            )
        return self.success and self.result == plan.index * 2

    @property
    def expired(self) -> bool:
        """arq's end of a job whose definition was gone when it came to run it."""
        return isinstance(self.result, JobExecutionFailed) and str(self.result) == "job expired"

    def __str__(self) -> str:
        return f"success={self.success} result={self.result!r}"


# The answers


@dataclass(slots=True)
class Answer:
    """How a waiter ended: a terminal state, ``lost`` (JobLost / a job_lost frame),
    or an ``error`` (any other exception or error frame)."""

    kind: Literal["state", "lost", "error"]
    at: float
    status: str | None = None
    error: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.kind == "state":
            return f"state {self.status}" + (f" ({self.error})" if self.error else "")
        return f"{self.kind}: {self.detail}"


@dataclass(eq=False)
class Waiter:
    """One waiter on one tracked job; ``answer`` resolves with its end."""

    kind: Kind
    job_id: str
    answer: asyncio.Future[Answer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    after_terminal: int = 0
    """States or frames it got for the job after its answer."""
    late: str = ""
    """The first of those."""

    def settle(self, answer: Answer) -> None:
        """Record the answer, or count a second one as coming after it."""
        if self.answer.done():
            self.after_terminal += 1
            self.late = self.late or str(answer)
        else:
            self.answer.set_result(answer)


def _state_answer(state: JobState) -> Answer:
    return Answer("state", now(), status=state.status.value, error=state.error)


async def wait_completed(tracker: Tracker, waiter: Waiter) -> None:
    """``tracker.completed(job_id)``; the answer is its return or its exception."""
    try:
        state = await tracker.completed(waiter.job_id)
    except JobLost as exc:
        waiter.settle(Answer("lost", now(), detail=str(exc)))
    except Exception as exc:
        waiter.settle(Answer("error", now(), detail=f"{type(exc).__name__}: {exc}"))
    else:
        waiter.settle(_state_answer(state))


async def wait_watch(tracker: Tracker, waiter: Waiter) -> None:
    """``tracker.watch(job_id)`` to its end; states after the terminal one are counted."""
    states = tracker.watch(waiter.job_id)
    try:
        async for state in states:
            waiter.subscribed.set()
            if state.completed or waiter.answer.done():
                waiter.settle(_state_answer(state))
    except JobLost as exc:
        waiter.settle(Answer("lost", now(), detail=str(exc)))
    except Exception as exc:
        waiter.settle(Answer("error", now(), detail=f"{type(exc).__name__}: {exc}"))
    finally:
        close = getattr(states, "aclose", None)
        if close is not None:
            await close()


class BridgeClient:
    """A websocket client following a few jobs as ``immortus.js`` does: on a lost
    connection it reconnects with backoff and subscribes again to every job not
    ended, with ``since_seq`` the highest seq it saw of the job."""

    def __init__(self, url: Callable[[], str], waiters: list[Waiter]) -> None:
        self._url = url
        self.waiters = {waiter.job_id: waiter for waiter in waiters}
        self.seen: dict[str, int] = {}
        self.reconnects = 0
        self.stray: list[str] = []
        """Frames that belong to no job of this client (none should come)."""

    def _subscribe(self, job_id: str) -> str:
        message: dict[str, Any] = {
            "type": "subscribe",
            "job_id": job_id,
            "token": mint_token(job_id, SECRET, ttl=3600),
        }
        if job_id in self.seen:
            message["since_seq"] = self.seen[job_id]
        return json.dumps(message)

    async def run(self) -> None:
        """Follow the jobs until cancelled (the run counts late frames meanwhile)."""
        delay = 0.05
        while True:
            pending = [j for j, w in self.waiters.items() if not w.answer.done()]
            try:
                async with connect(self._url(), open_timeout=5 * SCALE) as ws:
                    delay = 0.05
                    for job_id in pending:
                        await ws.send(self._subscribe(job_id))
                    async for raw in ws:
                        await self._handle(ws, json.loads(raw))
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                pass
            if all(w.answer.done() for w in self.waiters.values()):
                await asyncio.Event().wait()  # nothing to follow: wait to be cancelled
            # Not a wait for a condition: the reconnect backoff of a real client.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            self.reconnects += 1

    async def _handle(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        job_id = frame.get("job_id")
        waiter = self.waiters.get(job_id) if isinstance(job_id, str) else None
        if waiter is None:
            self.stray.append(json.dumps(frame)[:200])
            return
        if frame.get("type") == "state":
            waiter.subscribed.set()
            self.seen[waiter.job_id] = max(self.seen.get(waiter.job_id, 0), int(frame["seq"]))
            if frame.get("completed") or waiter.answer.done():
                waiter.settle(
                    Answer("state", now(), status=frame["status"], error=frame.get("error"))
                )
            return
        code = frame.get("code")
        if code == "redis_unavailable" and not waiter.answer.done():
            # The bridge ended the subscription for now; the JS client retries.
            await ws.send(self._subscribe(waiter.job_id))
            return
        kind: Literal["lost", "error"] = "lost" if code == "job_lost" else "error"
        waiter.settle(Answer(kind, now(), detail=f"{code}: {frame.get('message')}"))


# The processes


class BridgeProcess:
    """``immortus-async bridge`` on a fixed port, so that a restart takes it again."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.port = free_port()
        self.process: Spawned | None = None
        self.logs: list[str] = []
        """The output of every process run so far."""

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>``."""
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start it and wait until it listens."""
        command = [sys.executable, "-m", "immortus_async.cli", "bridge"]
        command += ["--redis", self.redis_url, "--port", str(self.port)]
        self.process = await Spawned.start(
            *command, cwd=ROOT, env={**os.environ, "IMMORTUS_SECRET": SECRET}
        )
        await self.process.expect(r"listening on ws://", timeout=30)

    async def kill(self) -> None:
        """SIGKILL it and wait for the exit."""
        if self.process is not None:
            await self.process.stop(signal.SIGKILL)
            self.logs.extend(self.process.lines)
            self.process = None

    async def healthy(self) -> bool:
        """True if ``GET /healthz`` answers 200 (Redis and the pub/sub connection up)."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status = await asyncio.wait_for(reader.readline(), 5)
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
        return status.split(b" ")[1:2] == [b"200"]

    def output(self) -> list[str]:
        """Every line the bridge processes printed."""
        return self.logs + (self.process.lines if self.process is not None else [])


async def start_worker(redis_url: str, *options: str) -> Spawned:
    """A worker process (see :mod:`tests.faults.worker`) once it takes jobs."""
    command = [sys.executable, "-m", "tests.faults.worker", redis_url, *options]
    worker = await Spawned.start(*command, cwd=ROOT)
    await worker.expect(READY, timeout=30)
    return worker


# A run


@dataclass
class Tally:
    """The counts of one scenario, per kind of waiter, and of the jobs themselves."""

    scenario: str
    jobs: int
    loses_data: bool
    right: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    lost: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    wrong: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    hung: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    after_terminal: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    failed_by_tracking: int = 0
    twins_wrong: int = 0
    recovery: dict[Kind, tuple[float, float]] = field(default_factory=dict)
    """Per kind: seconds from the end of the fault to the first and the last answer."""
    duration_s: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def example(self, category: str, text: str) -> None:
        """Keep a few examples of each thing that went wrong, for the message."""
        kept = self.examples.setdefault(category, [])
        if len(kept) < 3:
            kept.append(text)

    @property
    def failures(self) -> int:
        """Everything that must be zero."""
        return (
            sum(self.wrong.values())
            + sum(self.hung.values())
            + sum(self.after_terminal.values())
            + self.failed_by_tracking
            + self.twins_wrong
        )

    def table(self) -> str:
        """The counts as a small table."""
        lines = [
            f"== {self.scenario}: {self.jobs} tracked jobs + {self.jobs} untracked twins, "
            f"{self.duration_s:.1f}s",
            f"{'waiters':<10}{'right':>7}{'(lost)':>8}{'wrong':>7}{'hung':>6}{'after-end':>11}"
            f"{'recovery: first/last answer after the fault':>46}",
        ]
        for kind in KINDS:
            first, last = self.recovery.get(kind, (None, None))
            recovery = "-" if first is None else f"{first:.2f}s / {last:.2f}s"
            lines.append(
                f"{kind:<10}{self.right[kind]:>7}{self.lost[kind]:>8}{self.wrong[kind]:>7}"
                f"{self.hung[kind]:>6}{self.after_terminal[kind]:>11}{recovery:>46}"
            )
        lines.append(
            f"jobs failed by tracking: {self.failed_by_tracking}; "
            f"untracked twins wrong: {self.twins_wrong}"
        )
        lines += [f"  note: {note}" for note in self.notes]
        for category, examples in self.examples.items():
            lines += [f"  {category}: {example}" for example in examples]
        return "\n".join(lines)


class Run:
    """Everything one scenario runs: Redis, trackers, the bridge, workers, waiters."""

    def __init__(self, name: str, server: RedisServer, *, loses_data: bool = False) -> None:
        self.name = name
        self.server = server
        self.loses_data = loses_data
        self.plans = plans(JOBS)
        self.tracked = [plan for plan in self.plans if plan.tracked]
        self.waiters: list[Waiter] = []
        self.clients: list[BridgeClient] = []
        self.workers: list[Spawned] = []
        self._killed: set[Spawned] = set()
        self._worker_options: tuple[str, ...] = ()
        self.worker_exits: list[str] = []
        """Workers that exited on their own (and were started again)."""
        self.bridge = BridgeProcess(server.url)
        self.fault_ended: float | None = None
        self.notes: list[str] = []
        """What the tally should mention about the run itself."""
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Run:
        await self._stack.__aenter__()
        # The test's own client rides out the restarts as the workers' does.
        self.redis: Redis = Redis.from_url(
            self.server.url, retry=RETRY, retry_on_error=RETRY_ON_ERROR
        )
        self._stack.push_async_callback(self.redis.aclose)
        self.pool: ArqRedis = await create_pool(settings(self.server.url))
        self._stack.push_async_callback(self.pool.aclose)
        # Two applications wait: one with completed(), one with watch(); each has its
        # own pub/sub connection, as two web processes would.
        self.waiting = await self._stack.enter_async_context(Tracker(self.server.url))
        self.watching = await self._stack.enter_async_context(Tracker(self.server.url))
        self._stack.push_async_callback(self._stop_processes)
        self._stack.push_async_callback(self._cancel_tasks)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _stop_processes(self) -> None:
        for worker in self.workers:
            await self.kill_worker(worker)
        await self.bridge.kill()

    # Setting up

    async def prepare(self, *, workers: int = 2, worker_options: tuple[str, ...] = ()) -> None:
        """Enqueue the jobs, subscribe every waiter, then start the workers."""
        self._started = now()
        await self.bridge.start()
        for plan in self.plans:
            arguments = (plan.index, 4, 0.05, plan.fail)
            if plan.tracked:
                await self.waiting.enqueue(
                    self.pool, "tracked_job", *arguments, _job_id=plan.job_id
                )
            else:
                await self.pool.enqueue_job("untracked_job", *arguments, _job_id=plan.job_id)
        for plan in self.tracked:
            completing, watching = Waiter("completed", plan.job_id), Waiter("watch", plan.job_id)
            self.waiters += [completing, watching]
            self._spawn(wait_completed(self.waiting, completing))
            self._spawn(wait_watch(self.watching, watching))
        split = len(self.tracked) * 2 // 3
        singles, groups = self.tracked[:split], self.tracked[split:]
        # Most pages follow one job; some follow several on one connection.
        for chunk in [[plan] for plan in singles] + list(_chunks(groups, 4)):
            waiters = [Waiter("bridge", plan.job_id) for plan in chunk]
            self.waiters += waiters
            client = BridgeClient(lambda: self.bridge.url, waiters)
            self.clients.append(client)
            self._spawn(client.run())
        await self._until_subscribed()
        self._worker_options = ("--in-progress", str(IN_PROGRESS), *worker_options)
        await asyncio.gather(*(self.start_worker() for _ in range(workers)))

    async def start_worker(self) -> Spawned:
        """Start one more worker process, supervised: one that exits on its own (arq's
        loop dies on some Redis errors) is noted and replaced, as a supervisor would."""
        worker = await start_worker(self.server.url, *self._worker_options)
        self.workers.append(worker)
        self._spawn(self._supervise(worker))
        return worker

    async def _supervise(self, worker: Spawned) -> None:
        status = await worker.process.wait()
        if worker not in self._killed:
            last = worker.lines[-1] if worker.lines else ""
            self.worker_exits.append(f"exit status {status}: {last}")
            await self.start_worker()

    async def kill_worker(self, worker: Spawned) -> None:
        """SIGKILL ``worker`` (not replaced) and wait for its exit."""
        self._killed.add(worker)
        if worker.process.returncode is None:
            await worker.stop(signal.SIGKILL)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(coroutine))

    async def _until_subscribed(self) -> None:
        keys = Keys()
        channels = [keys.channel(plan.job_id) for plan in self.tracked]

        async def all_subscribed() -> bool:
            if not all(w.subscribed.is_set() for w in self.waiters if w.kind != "completed"):
                return False
            # completed() shows nothing before its end: count the channel's subscribers
            # (one per tracker and one for the bridge).
            counts = await self.redis.pubsub_numsub(*channels)
            return all(count >= 3 for _, count in counts)

        await wait_until(all_subscribed, timeout=60, interval=0.05, message="every waiter")

    # During the run

    def answered(self) -> int:
        """How many waiters have their answer."""
        return sum(waiter.answer.done() for waiter in self.waiters)

    async def until_answered(self, fraction: float) -> None:
        """Wait until ``fraction`` of the waiters have their answer (the fault's cue).

        Answers that stop coming (waiters hung by an earlier fault) do not stop the
        run: after :data:`SETTLE` seconds the next fault comes all the same, noted.
        """
        try:
            await wait_until(
                lambda: self.answered() >= fraction * len(self.waiters),
                timeout=SETTLE / SCALE,
                interval=0.01,
                message=f"{fraction:.0%} of the answers",
            )
        except AssertionError:
            self.notes.append(f"only {self.answered()} answers at the cue of {fraction:.0%}")

    async def pubsub_back(self) -> bool:
        """True once both trackers and the bridge serve their waiters again: each hub
        is connected, or has no channel left to serve (its waiters have all ended)."""
        return self.waiting.healthy and self.watching.healthy and await self.bridge.healthy()

    def fault_over(self) -> None:
        """Mark the end of the (last) fault: recovery is counted from here."""
        self.fault_ended = now()

    # The end

    async def finish(self) -> Tally:
        """Wait up to :data:`SETTLE` after the fault for every answer; count."""
        assert self.fault_ended is not None, "the scenario never marked its fault over"
        tally = Tally(self.name, JOBS, self.loses_data)
        answers = [waiter.answer for waiter in self.waiters]
        await asyncio.wait(answers, timeout=max(0.0, self.fault_ended + SETTLE - now()))
        hung = {waiter for waiter in self.waiters if not waiter.answer.done()}
        outcomes = await self._outcomes()
        # Late frames still arriving are counted until the clients close.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        tally.duration_s = now() - self._started
        self._count(tally, outcomes, hung)
        tally.notes += self.notes
        tally.notes.append(f"arq has a result for {len(outcomes)} of {len(self.plans)} jobs")
        resumed = sum(line.startswith(RESUMED) for worker in self.workers for line in worker.lines)
        if resumed:
            tally.notes.append(
                f"arq's loop stopped on a Redis error and was resumed {resumed} times"
            )
        for line in self.worker_exits:
            tally.notes.append(f"a worker exited by itself and was replaced: {line}")
        for kind in KINDS:
            after = [
                waiter.answer.result().at - self.fault_ended
                for waiter in self.waiters
                if waiter.kind == kind and waiter.answer.done()
            ]
            after = [seconds for seconds in after if seconds >= 0]
            if after:
                tally.recovery[kind] = (min(after), max(after))
        stray = [frame for client in self.clients for frame in client.stray]
        tally.wrong["bridge"] += len(stray)
        for frame in stray[:3]:
            tally.example("bridge stray frame", frame)
        output = self.bridge.output()
        logged = [line for line in output if " ERROR " in line]
        if logged:
            raised = next((line for line in output if _RAISED.match(line)), "")
            tally.notes.append(f"the bridge logged {len(logged)} ERROR lines: {logged[0]} {raised}")
        return tally

    async def _outcomes(self) -> dict[str, Outcome]:
        """arq's result of every job, once arq has none left to run (bounded wait)."""

        async def arq_done() -> bool:
            queued: int = await self.redis.zcard("arq:queue")
            return queued == 0

        with contextlib.suppress(AssertionError):
            await wait_until(arq_done, timeout=SETTLE, interval=0.05, message="arq's queue")
        outcomes = {}
        for plan in self.plans:
            info = await Job(plan.job_id, self.pool).result_info()
            if info is not None:
                outcomes[plan.job_id] = Outcome(info.success, info.result)
        return outcomes

    def _count(self, tally: Tally, outcomes: dict[str, Outcome], hung: set[Waiter]) -> None:
        plans = {plan.job_id: plan for plan in self.plans}
        unknown_ends = 0
        for plan in self.plans:
            outcome = outcomes.get(plan.job_id)
            if outcome is not None and outcome.expected(plan):
                continue
            if self.loses_data and (outcome is None or outcome.expired):
                # Redis lost its result with everything else, or lost the job's
                # definition before arq started it (arq records "job expired").
                continue
            if plan.tracked:
                tally.failed_by_tracking += 1
                tally.example(
                    "failed by tracking", f"{plan.job_id}: arq {outcome}, known {_known(plan)}"
                )
            else:
                tally.twins_wrong += 1
                tally.example("twin wrong", f"{plan.job_id}: arq {outcome}")
        for waiter in self.waiters:
            kind = waiter.kind
            tally.after_terminal[kind] += waiter.after_terminal
            if waiter.after_terminal:
                tally.example(
                    f"{kind} after its end",
                    f"{waiter.job_id}: {waiter.after_terminal}, first {waiter.late}",
                )
            if waiter in hung:
                tally.hung[kind] += 1
                tally.example(f"{kind} hung", waiter.job_id)
                continue
            answer = waiter.answer.result()
            plan = plans[waiter.job_id]
            if answer.kind == "lost" and self.loses_data:
                tally.right[kind] += 1
                tally.lost[kind] += 1
            elif self.loses_data and _unknown_end(answer, outcomes.get(plan.job_id)):
                tally.right[kind] += 1
                unknown_ends += 1
            elif answer.kind == "state" and _agrees(answer, plan, outcomes.get(plan.job_id)):
                tally.right[kind] += 1
            else:
                tally.wrong[kind] += 1
                tally.example(
                    f"{kind} wrong",
                    f"{waiter.job_id}: {answer} (arq: {outcomes.get(plan.job_id)})",
                )
        if unknown_ends:
            tally.notes.append(
                f"{unknown_ends} waiters got 'failed: arq kept no result' (the documented end of "
                "a job cancelled when arq has no record of it: a worker that died after the "
                "loss); counted right"
            )


# The last line of a traceback: the exception raised.
_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b")


def _unknown_end(answer: Answer, outcome: Outcome | None) -> bool:
    """The end ``@tracked`` records for a cancelled job of which arq has no record."""
    return (
        outcome is None
        and answer.status == JobStatus.FAILED.value
        and (answer.error or "").startswith("arq kept no result of the job")
    )


def _known(plan: Plan) -> str:
    return plan.error if plan.fail else f"result {plan.index * 2}"


def _agrees(answer: Answer, plan: Plan, outcome: Outcome | None) -> bool:
    """The waiter's terminal state says what arq recorded (what the job is known to
    do, where Redis lost arq's record)."""
    if outcome is None or outcome.expected(plan):
        # The known outcome: finished, or failed with the known error text.
        if not plan.fail:
            return answer.status == JobStatus.FINISHED.value
        return answer.status == JobStatus.FAILED.value and answer.error == plan.error
    # Something else ended the job (a timeout): the waiter must say what arq says.
    wanted = JobStatus.FINISHED if outcome.success else JobStatus.FAILED
    return answer.status == wanted.value


def _chunks(items: list[Plan], size: int) -> Iterator[list[Plan]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
