"""The contract every queue adapter passes: real workers of its queue, a real Redis.

Each case runs once per adapter of :data:`tests.adapters.drivers.DRIVERS`; what a
queue cannot do is skipped with its reason, and an adapter whose queue this
environment lacks is skipped as not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect

from immortus_async import (
    AbortUnsupported,
    JobNotFound,
    JobState,
    JobStatus,
    RedisServer,
    Tracker,
    mint_token,
)
from immortus_async.adapters import installed
from immortus_async.bridge import serve

from ..bridge.helpers import MountServer
from ..conftest import NOT_INSTALLED
from ..utils import SCALE
from .drivers import (
    ABORT,
    ABORT_QUEUED_AGAIN,
    ABORT_RUNNING_AGAIN,
    BIG_RESULT,
    DRIVERS,
    FAIL,
    FINISH,
    HANG_ONCE,
    MISSING,
    NEVER_RUN,
    PLAIN,
    PROGRESS,
    RESULT,
    RESULT_VALUE,
    RETRY,
    RUN_AGAIN,
    UNSEEN_QUEUED,
    WAIT,
    Driver,
)

S = JobStatus
SECRET = "contract-suite-secret-0123456789abcdef"


@pytest.fixture(params=sorted(DRIVERS))
async def driver(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[Driver]:
    """The driver of one adapter on the test's Redis; its workers stopped at the end."""
    adapter: str = request.param
    if not installed(adapter):
        pytest.skip(f"{adapter}: {NOT_INSTALLED}")
    made = DRIVERS[adapter](redis_server.url)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def tracker(driver: Driver) -> AsyncIterator[Tracker]:
    """The driver's Tracker, closed at the end."""
    async with driver.tracker() as made:
        yield made


def cannot(driver: Driver, case: str) -> None:
    """Skip, with the reason, a case that the driver's queue cannot do."""
    if case in driver.cannot:
        pytest.skip(f"{driver.adapter} cannot: {driver.cannot[case]}")


async def states_until(states: AsyncIterator[JobState], timeout: float = 30) -> list[JobState]:
    """Every state ``states`` yields up to its end (a terminal state)."""
    seen = []
    async with asyncio.timeout(timeout * SCALE):
        async for state in states:
            seen.append(state)
    return seen


async def until_running(states: AsyncIterator[JobState]) -> JobState:
    """Read ``states`` until the job's body has reported its first progress (0.1)."""
    async with asyncio.timeout(30 * SCALE):
        async for state in states:
            if state.status is S.STARTED and state.progress == 0.1:
                return state
    raise AssertionError("the job ended before it ran")


async def test_finished(driver: Driver, tracker: Tracker) -> None:
    """A job that returns ends finished, on attempt 1."""
    job_id = await driver.enqueue(tracker, FINISH)
    assert (await tracker.status(job_id)).status is S.QUEUED
    await driver.start_worker()
    state = await tracker.completed(job_id, timeout=30 * SCALE)
    assert (state.status, state.attempt, state.error) == (S.FINISHED, 1, None)


async def test_a_job_with_an_owner_is_in_the_owners_feed_to_its_end(
    driver: Driver, tracker: Tracker
) -> None:
    """enqueue(owner=) through the adapter: the owner's feed gets the job queued, then
    its end, though the job side knows no owner; another owner's feed gets nothing."""
    feeds = {owner: tracker.watch_owner(owner) for owner in ("ada", "bob")}
    seen: dict[str, list[JobState]] = {"ada": [], "bob": []}

    async def read(owner: str) -> None:
        async for state in feeds[owner]:
            seen[owner].append(state)
            if state.completed:
                return

    # The feeds are subscribed before the enqueue: their snapshots are empty.
    readers = [asyncio.create_task(read(owner)) for owner in feeds]
    try:
        job_id = await driver.enqueue(tracker, FINISH, owner="ada")
        await driver.start_worker()
        async with asyncio.timeout(30 * SCALE):
            await readers[0]
        assert await tracker.owner(job_id) == "ada"
        assert {state.job_id for state in seen["ada"]} == {job_id}
        assert seen["ada"][-1].status is S.FINISHED
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for feed in feeds.values():
            await feed.aclose()  # type: ignore[attr-defined]
    assert seen["bob"] == []


async def test_failed_with_its_error_text(driver: Driver, tracker: Tracker) -> None:
    """A job that raises ends failed, with the exception's class and message."""
    job_id = await driver.enqueue(tracker, FAIL)
    await driver.start_worker()
    state = await tracker.completed(job_id, timeout=30 * SCALE)
    assert (state.status, state.error) == (S.FAILED, "ValueError: bad row")


async def test_retried_then_finished(driver: Driver, tracker: Tracker) -> None:
    """A job its queue runs again reads retrying between the runs, then finishes on 2."""
    job_id = await driver.enqueue(tracker, RETRY)
    watching = asyncio.create_task(states_until(tracker.watch(job_id)))
    await driver.start_worker()
    seen = await watching
    assert S.RETRYING in [state.status for state in seen]
    assert (seen[-1].status, seen[-1].attempt) == (S.FINISHED, 2)


async def test_aborted(driver: Driver, tracker: Tracker) -> None:
    """A running job its queue cancels for good ends aborted."""
    cannot(driver, ABORT)
    job_id = await driver.enqueue(tracker, WAIT)
    await driver.start_worker()
    await until_running(tracker.watch(job_id))
    await driver.abort(job_id)
    state = await tracker.completed(job_id, timeout=30 * SCALE)
    assert state.status is S.ABORTED


async def test_progress_and_meta_in_order(driver: Driver, tracker: Tracker) -> None:
    """A watcher subscribed before the worker starts sees progress only grow, meta
    merged, and the end with the last of both."""
    job_id = await driver.enqueue(tracker, PROGRESS)
    watching = asyncio.create_task(states_until(tracker.watch(job_id)))
    # The snapshot is read once subscribed: the queued state is the first one.
    await driver.start_worker()
    seen = await watching
    progress = [state.progress for state in seen if state.progress is not None]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert [state.seq for state in seen] == sorted({state.seq for state in seen})
    assert (seen[-1].status, seen[-1].meta) == (S.FINISHED, {"rows": 2})


async def test_a_job_the_queue_ends_unrun(driver: Driver, tracker: Tracker) -> None:
    """A job of a function no worker has is ended by the queue, unrun: a waiter sees it."""
    cannot(driver, NEVER_RUN)
    job_id = await driver.enqueue(tracker, MISSING)
    await driver.start_worker()
    state = await tracker.completed(job_id, timeout=30 * SCALE)
    assert state.status is S.FAILED and state.error


async def test_a_job_of_code_that_never_heard_of_us(driver: Driver, tracker: Tracker) -> None:
    """Enqueued by the queue's own API, run by an untracked function: still followed."""
    cannot(driver, UNSEEN_QUEUED)
    job_id = await driver.enqueue_untracked(PLAIN)
    waiter = asyncio.create_task(tracker.completed(job_id, timeout=30 * SCALE))
    await driver.start_worker()
    assert (await waiter).status is S.FINISHED


async def test_an_unknown_id_is_not_found_at_once(driver: Driver, tracker: Tracker) -> None:
    """An id that no one has: JobNotFound, without waiting."""
    with pytest.raises(JobNotFound):
        await tracker.completed("no-such-job", timeout=5 * SCALE)


async def test_a_killed_worker_stalls_its_job_then_the_queue_decides(
    driver: Driver, tracker: Tracker
) -> None:
    """SIGKILL a worker mid-job: its job reads stalled (no heartbeat), and then what the
    queue does with it: run again by the next worker, and finished."""
    job_id = await driver.enqueue(tracker, HANG_ONCE)
    states = tracker.watch(job_id)
    await driver.start_worker()
    await until_running(states)
    await driver.kill_worker()
    async with asyncio.timeout(30 * SCALE):
        async for state in states:
            if state.stalled:
                break
    assert (state.status, state.attempt) == (S.STARTED, 1)
    cannot(driver, RUN_AGAIN)
    await driver.start_worker()
    state = await tracker.completed(job_id, timeout=30 * SCALE)
    assert (state.status, state.attempt, state.stalled) == (S.FINISHED, 2, False)


async def test_waiting_through_the_bridge(
    driver: Driver, tracker: Tracker, redis_server: RedisServer
) -> None:
    """A websocket client of the bridge, subscribed before the worker starts, gets every
    state frame up to finished."""
    job_id = await driver.enqueue(tracker, FINISH)
    async with serve(redis_server.url, "127.0.0.1", 0, secret=SECRET) as bridge:
        async with connect(bridge.url) as client:
            token = mint_token(job_id, SECRET, ttl=60)
            await client.send(json.dumps({"type": "subscribe", "job_id": job_id, "token": token}))
            frames = []
            async with asyncio.timeout(30 * SCALE):
                while not frames or not frames[-1].get("completed"):
                    frame = json.loads(await client.recv())
                    if frame.get("type") == "state":
                        frames.append(frame)
                    if len(frames) == 1:
                        await driver.start_worker()
    assert frames[0]["status"] == "queued"
    assert frames[-1]["status"] == "finished"


@pytest.mark.parametrize("server", ["bridge", "mount"])
async def test_a_reported_result_is_in_the_terminal_state_and_frame(
    driver: Driver, tracker: Tracker, redis_server: RedisServer, server: str
) -> None:
    """A job side that reports results puts the return value in the finished state:
    completed() has it, and so has the terminal frame of the bridge and of the mount."""
    job_id = await driver.enqueue(tracker, RESULT)
    async with (
        protocol_server(server, redis_server.url) as url,
        connect(url) as client,
    ):
        token = mint_token(job_id, SECRET, ttl=60)
        await client.send(json.dumps({"type": "subscribe", "job_id": job_id, "token": token}))
        assert json.loads(await client.recv())["status"] == "queued"
        await driver.start_worker()
        state = await tracker.completed(job_id, timeout=30 * SCALE)
        async with asyncio.timeout(30 * SCALE):
            frame = json.loads(await client.recv())
            while not frame.get("completed"):
                frame = json.loads(await client.recv())
    assert (state.status, state.result) == (S.FINISHED, RESULT_VALUE)
    assert (frame["status"], frame["result"]) == ("finished", RESULT_VALUE)


@contextlib.asynccontextmanager
async def protocol_server(kind: str, redis_url: str) -> AsyncIterator[str]:
    """The bridge, or uvicorn serving the ASGI mount, on a free port; its websocket URL."""
    if kind == "bridge":
        async with serve(redis_url, "127.0.0.1", 0, secret=SECRET) as bridge:
            yield bridge.url
        return
    async with Tracker(redis_url) as mount_tracker:
        mount = await MountServer(mount_tracker, secret=SECRET).start()
        try:
            yield mount.url + "/"
        finally:
            await mount.stop()


async def test_a_result_over_the_limit_is_left_out_and_the_job_still_ends(
    driver: Driver, tracker: Tracker
) -> None:
    """A result larger than the limit never holds or fails the job: it ends finished,
    without a result, and its worker logs why."""
    job_id = await driver.enqueue(tracker, BIG_RESULT)
    await driver.start_worker()
    state = await tracker.completed(job_id, timeout=30 * SCALE)
    assert (state.status, state.result) == (S.FINISHED, None)
    await driver.worker_output("result is not reported in its state.*over the 1024-byte limit")


async def test_abort_a_queued_job(driver: Driver, tracker: Tracker) -> None:
    """tracker.abort on a job no worker has taken: every watcher gets aborted, no
    worker runs it, and its id can be enqueued again at once."""
    job_id = await driver.enqueue(tracker, WAIT)
    if ABORT in driver.cannot:
        with pytest.raises(AbortUnsupported):
            await driver.tracker_abort(tracker, job_id)
        cannot(driver, ABORT)
    watchers = [asyncio.create_task(states_until(tracker.watch(job_id))) for _ in range(2)]
    assert await driver.tracker_abort(tracker, job_id) is True
    await driver.start_worker()
    for seen in await asyncio.gather(*watchers):
        assert seen[-1].status is S.ABORTED
        assert S.STARTED not in [state.status for state in seen]
    assert await driver.tracker_abort(tracker, job_id) is False  # it has ended
    cannot(driver, ABORT_QUEUED_AGAIN)
    assert await driver.enqueue_as(tracker, FINISH, job_id) == job_id
    state = await tracker.completed(job_id, timeout=30 * SCALE)
    assert state.status is S.FINISHED


async def test_abort_a_running_job(driver: Driver, tracker: Tracker) -> None:
    """tracker.abort on a running job: its worker cancels it, every watcher gets
    aborted; then its id is enqueued again, where the queue allows it."""
    cannot(driver, ABORT)
    job_id = await driver.enqueue(tracker, WAIT)
    await driver.start_worker()
    await until_running(tracker.watch(job_id))
    watchers = [asyncio.create_task(states_until(tracker.watch(job_id))) for _ in range(2)]
    assert await driver.tracker_abort(tracker, job_id) is True
    for seen in await asyncio.gather(*watchers):
        assert seen[-1].status is S.ABORTED
    cannot(driver, ABORT_RUNNING_AGAIN)
    assert await driver.enqueue_as(tracker, FINISH, job_id) == job_id
    state = await tracker.completed(job_id, timeout=30 * SCALE)
    assert state.status is S.FINISHED


async def test_abort_through_the_bridge(
    driver: Driver, tracker: Tracker, redis_server: RedisServer
) -> None:
    """A websocket client of a bridge that allows aborts sends ``abort`` for the job
    it follows: it gets the reply, then the terminal aborted state."""
    cannot(driver, ABORT)
    job_id = await driver.enqueue(tracker, WAIT)
    await driver.start_worker()
    await until_running(tracker.watch(job_id))
    token = mint_token(job_id, SECRET, ttl=60)
    async with (
        driver.abort_queue() as queue,
        serve(
            redis_server.url, "127.0.0.1", 0, secret=SECRET, allow_abort=True, queue=queue
        ) as bridge,
        connect(bridge.url) as client,
    ):
        await client.send(json.dumps({"type": "subscribe", "job_id": job_id, "token": token}))
        assert json.loads(await client.recv())["status"] == "started"
        await client.send(json.dumps({"type": "abort", "job_id": job_id, "token": token}))
        frames = []
        async with asyncio.timeout(30 * SCALE):
            while not frames or not frames[-1].get("completed"):
                frames.append(json.loads(await client.recv()))
    assert {"type": "abort", "job_id": job_id, "requested": True} in frames
    assert frames[-1]["status"] == "aborted"
