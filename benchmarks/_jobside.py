"""Child roles shared by the bridge benchmarks: the job side and websocket clients.

``driver``: writes job states exactly as ``@tracked`` does (``RedisPubSubStrategy.apply``,
one EVALSHA that writes and publishes), at a steady rate, and reports when each job
ended (``time.monotonic()`` just before its terminal write).

``clients``: opens one websocket connection per (job, follower) to the bridge, each
subscribed on connect (``/jobs/<id>?token=...``), and reports when each received its
job's terminal frame.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from _common import SECRET, child_main, next_command, pace, say
from websockets.asyncio.client import ClientConnection, connect

from immortus_async import JobStatus, JobUpdate, RedisPubSubStrategy, mint_token


async def driver(config: dict[str, Any], stream: AsyncIterator[dict[str, Any]]) -> None:
    """Queue ``config["jobs"]``, then on each ``finish`` command end the jobs it names."""
    strategy = RedisPubSubStrategy(config["redis"])
    try:
        jobs: list[str] = config["jobs"]
        for start in range(0, len(jobs), 500):
            batch = jobs[start : start + 500]
            await asyncio.gather(
                *(
                    strategy.apply(JobUpdate(job_id=j, status=JobStatus.QUEUED, attempt=0))
                    for j in batch
                )
            )
        say("queued")
        async for command in stream:
            if command["command"] == "stop":
                break
            ends = await _finish(strategy, command["jobs"], command["rate"])
            say("finished", ends=ends)
    finally:
        await strategy.aclose()
        await strategy.redis.aclose()


async def _finish(strategy: RedisPubSubStrategy, jobs: list[str], rate: float) -> dict[str, float]:
    ends: dict[str, float] = {}
    async for indexes in pace(len(jobs), rate):
        batch = [jobs[i] for i in indexes]
        now = time.monotonic()
        for job_id in batch:
            ends[job_id] = now
        await asyncio.gather(
            *(
                strategy.apply(JobUpdate(job_id=j, status=JobStatus.FINISHED, attempt=1))
                for j in batch
            )
        )
    return ends


async def clients(config: dict[str, Any], stream: AsyncIterator[dict[str, Any]]) -> None:
    """Connect ``config["follow"]`` (a list of job ids, one connection each) and report
    each connection's terminal-frame time, group by group (``config["groups"]``)."""
    url: str = config["url"]
    follow: list[str] = config["follow"]
    group_of: dict[str, str] = config["groups"]
    limit = asyncio.Semaphore(config.get("concurrency", 100))
    pending: dict[str, int] = defaultdict(int)
    for job_id in follow:
        pending[group_of[job_id]] += 1
    done = {group: asyncio.Event() for group in pending}
    connections: list[ClientConnection] = []
    errors: list[str] = []

    async def open_one(job_id: str) -> ClientConnection:
        token = mint_token(job_id, SECRET, ttl=3600)
        path = f"/jobs/{quote(job_id, safe='')}?token={token}"
        async with limit:
            for attempt in range(5):
                try:
                    ws = await connect(
                        url + path,
                        ping_interval=None,
                        compression=None,
                        open_timeout=60,
                        close_timeout=2,
                        max_queue=4,
                    )
                    break
                except (OSError, TimeoutError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            frame = json.loads(await ws.recv())  # the snapshot: subscribed
            if frame.get("type") != "state":
                errors.append(str(frame))
        return ws

    async def listen(ws: ClientConnection, job_id: str) -> None:
        group = group_of[job_id]
        try:
            async for raw in ws:
                now = time.monotonic()
                frame = json.loads(raw)
                if frame.get("type") == "state" and frame.get("completed"):
                    _done_one(job_id, group, now)
                    return
        except Exception as exc:  # a lost connection is a result, not a crash
            errors.append(f"{job_id}: {exc!r}")

    ends_at: dict[str, list[tuple[str, float]]] = defaultdict(list)

    def _done_one(job_id: str, group: str, now: float) -> None:
        ends_at[group].append((job_id, now))
        pending[group] -= 1
        if pending[group] == 0:
            done[group].set()

    started = time.monotonic()
    connections = list(await asyncio.gather(*(open_one(j) for j in follow)))
    listeners = [
        asyncio.create_task(listen(ws, j)) for ws, j in zip(connections, follow, strict=True)
    ]
    # This process is the measuring instrument, standing in for thousands of
    # browsers: its own garbage collector must not pause it mid-measurement.
    gc.collect()
    gc.freeze()
    gc.disable()
    say("subscribed", seconds=time.monotonic() - started, errors=errors[:5])
    for group in config["group_order"]:
        if group not in done:
            continue
        try:
            await asyncio.wait_for(done[group].wait(), config.get("timeout", 120))
        except TimeoutError:
            pass
        say("received", group=group, ends=ends_at[group], missing=pending[group], errors=errors[:5])
    await next_command(stream, "close")
    for task in listeners:
        task.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)
    await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
    say("closed")


if __name__ == "__main__":
    child_main({"driver": driver, "clients": clients})
