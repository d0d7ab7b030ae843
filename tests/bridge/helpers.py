"""Test helpers for the bridge: tokens, job updates, websocket and HTTP clients."""

from __future__ import annotations

import asyncio
import json
import time
import signal
from typing import Any, Protocol

import jwt
from websockets.asyncio.client import ClientConnection, connect

from immortus_async import JobState, JobStatus, JobUpdate, RedisPubSubStrategy, mint_token
from ..utils import SCALE

SECRET = "bridge-tests-secret-0123456789abcdef"
OTHER_SECRET = "someone-elses-secret-0123456789abcdef"


class Listening(Protocol):
    """Where a bridge listens: a :class:`~immortus_async.bridge.Bridge` or a process."""

    @property
    def url(self) -> str: ...
    @property
    def port(self) -> int: ...


class BridgeProcess:
    """A bridge run by the CLI in a process of its own; its log is read as it comes."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, output: list[str]) -> None:
        self.process = process
        self.port = port
        self.output = output
        self._reader = asyncio.create_task(self._read_log())

    async def _read_log(self) -> None:
        # Read continuously: a full pipe would block the bridge on its next log line.
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.output.append(line.decode())

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>``."""
        return f"ws://127.0.0.1:{self.port}"

    async def stop(self) -> int:
        """SIGTERM, wait for the exit, return the status."""
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20 * SCALE):
            status = await self.process.wait()
            await self._reader
        return status


def token(job_id: str, *, ttl: float = 300, secret: str = SECRET) -> str:
    """A token that opens ``job_id``."""
    return mint_token(job_id, secret, ttl=ttl)


def expired_token(job_id: str) -> str:
    """A correctly signed token whose ``exp`` has passed."""
    claims = {"job_id": job_id, "exp": int(time.time()) - 10}
    return jwt.encode(claims, SECRET.encode(), algorithm="HS256")


async def advance(
    strategy: RedisPubSubStrategy, job_id: str, status: JobStatus, **fields: Any
) -> JobState:
    """Apply one update as a worker would (``queued`` is attempt 0, the rest attempt 1)."""
    attempt = 0 if status is JobStatus.QUEUED else 1
    state = await strategy.apply(JobUpdate(job_id=job_id, status=status, attempt=attempt, **fields))
    assert state is not None, f"{status} was dropped for {job_id}"
    return state


def subscribe(job_id: str, **fields: Any) -> str:
    """A subscribe message with a valid token unless ``fields`` says otherwise."""
    message = {"type": "subscribe", "job_id": job_id, "token": token(job_id), **fields}
    return json.dumps(message)


async def open_client(bridge: Listening, path: str = "/", **options: Any) -> ClientConnection:
    """A websockets client of ``bridge``."""
    return await connect(bridge.url + path, open_timeout=10 * SCALE, **options)


async def receive(client: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    """The next frame, parsed; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout * SCALE):
        raw = await client.recv()
    frame: dict[str, Any] = json.loads(raw)
    return frame


async def receive_until_completed(
    client: ClientConnection, job_id: str, timeout: float = 10
) -> list[dict[str, Any]]:
    """Every state frame of ``job_id`` up to and including its terminal one."""
    frames = []
    async with asyncio.timeout(timeout * SCALE):
        while True:
            frame = json.loads(await client.recv())
            if frame.get("job_id") != job_id:
                continue
            assert frame["type"] == "state", frame
            frames.append(frame)
            if frame["completed"]:
                return frames


async def http_get(
    bridge: Listening, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """``GET path`` on the bridge's port: (status, headers lower-cased, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{bridge.port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    async with asyncio.timeout(10 * SCALE):
        raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body
