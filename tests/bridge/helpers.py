"""Test helpers for the bridge: tokens, job updates, websocket and HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

import immortus_async.asgi
from immortus_async import (
    JobState,
    JobStatus,
    JobUpdate,
    RedisPubSubStrategy,
    Tracker,
    mint_token,
)
from immortus_async.bridge import Bridge, BridgeStatistics, serve

from ..utils import SCALE

SECRET = "bridge-tests-secret-0123456789abcdef"
OTHER_SECRET = "someone-elses-secret-0123456789abcdef"


class Listening(Protocol):
    """Where a bridge listens: a :class:`~immortus_async.bridge.Bridge` or a process."""

    @property
    def url(self) -> str: ...
    @property
    def port(self) -> int: ...


MOUNT_PATH = "/immortus"
"""Where :class:`MountServer` mounts the ASGI app in its FastAPI app."""


class MountServer:
    """Real uvicorn serving a FastAPI app with ``immortus_async.asgi.app`` at :data:`MOUNT_PATH`.

    Quacks like a :class:`~immortus_async.bridge.Bridge` for the protocol tests:
    :attr:`url` (the websocket root, the mount), :attr:`port`, :meth:`statistics`.
    :meth:`stop` and :meth:`start` again restart it on the same port.
    """

    def __init__(self, tracker: Any, port: int = 0, **options: Any) -> None:
        self.tracker = tracker
        self.mount = immortus_async.asgi.app(tracker, **options)
        self.app = FastAPI()
        self.app.mount(MOUNT_PATH, self.mount)
        self._port = port
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> MountServer:
        """Listen on the port (a free one the first time) and wait until uvicorn serves."""
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self._port,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="websockets-sansio",
            # As the bridge: messages are small, and deflate costs memory per connection.
            ws_per_message_deflate=False,
            # Open event streams would hold a graceful shutdown until their job ends.
            timeout_graceful_shutdown=0.5 * SCALE,
        )
        self._server = uvicorn.Server(config)
        self._serving = asyncio.create_task(self._server.serve())
        async with asyncio.timeout(10 * SCALE):
            while not self._server.started:
                await asyncio.wait([self._serving], timeout=0.01)
                if self._serving.done():
                    self._serving.result()
        self._port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop uvicorn and wait for it (its connections are closed)."""
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            async with asyncio.timeout(10 * SCALE):
                await self._serving
            self._server = self._serving = None

    @property
    def port(self) -> int:
        """The port uvicorn listens on."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>/immortus``: the mount, the websocket root."""
        return f"ws://127.0.0.1:{self._port}{MOUNT_PATH}"

    def statistics(self) -> BridgeStatistics:
        """The mount's connections and subscriptions, as a bridge counts them."""
        return self.mount.statistics()


@contextlib.asynccontextmanager
async def protocol_server(
    kind: str, redis_url: str, *, bridge_only: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[Bridge | MountServer]:
    """The bridge (``kind="bridge"``), or uvicorn serving the mount (``"mount"``), with
    tokens signed with ``SECRET``, ``options`` for either and ``bridge_only`` for the bridge."""
    if kind == "mount":
        async with Tracker(redis_url) as tracker:
            server = await MountServer(tracker, secret=SECRET, **options).start()
            try:
                yield server
            finally:
                await server.stop()
        return
    async with serve(
        redis_url, "127.0.0.1", 0, secret=SECRET, **options, **(bridge_only or {})
    ) as bridge:
        yield bridge


async def read_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """Server-Sent Events from a response's lines: ``{"id", "event", "data"}``, data parsed.

    Written out, not a library's: the test reads the stream as the wire has it.
    """
    event: dict[str, Any] = {}
    async for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[name] = json.loads(value) if name == "data" else value


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


def token(job_id: str, *, ttl: float = 86_400, secret: str = SECRET) -> str:
    """A token that opens ``job_id``; by default for a day: parametrized cases mint
    theirs as the suite is collected, minutes before they run on a loaded machine."""
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
    bridge: Listening, path: str, headers: dict[str, str] | None = None, *, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """``GET path`` (or ``method``) on the bridge's port: (status, headers lower-cased, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    # The mount serves under its path; the bridge at the root.
    root = urlsplit(bridge.url).path
    lines = [
        f"{method} {root}{path} HTTP/1.1",
        f"Host: 127.0.0.1:{bridge.port}",
        "Connection: close",
    ]
    if method == "POST":
        lines.append("Content-Length: 0")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(10 * SCALE):
            raw = await reader.read()
    finally:
        # Closed on a timeout too: a socket left to the garbage collector fails a
        # later test with its ResourceWarning.
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


class PageServer:
    """A loopback HTTP server: GET answers :attr:`html`; POST, the application's
    create endpoint, records its JSON body in :attr:`posted` and answers :attr:`created`.

    The page lives on another port than the bridge, so the browser treats the
    bridge as cross-origin, as it is in a real deployment. Start it first (the
    bridge needs its origin), then set :attr:`html` (which needs the bridge's port).
    """

    def __init__(self) -> None:
        self.html = ""
        self.origin = ""
        self.posted: list[Any] = []
        self.created: dict[str, str] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen on a free port; return the origin, ``http://127.0.0.1:<port>``."""
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.origin = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.origin

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        content_type, body = "text/html; charset=utf-8", self.html.encode()
        if head.startswith("POST "):
            length = re.search(r"(?im)^content-length:\s*(\d+)", head)
            data = await reader.readexactly(int(length.group(1)) if length else 0)
            self.posted.append(json.loads(data))
            content_type, body = "application/json", json.dumps(self.created).encode()
        writer.write(
            (
                f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + body
        )
        await writer.drain()
        writer.close()

    async def aclose(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def follow_page(bridge: Listening, *, module: bool = False) -> str:
    """A page with a progress bar that follows a job with immortus.js.

    ``window.follow(job_id, token, options)`` starts following and stores the
    promise in ``window.done``; every callback is recorded in ``window.events``.
    With ``module=True`` the page imports ``immortus.mjs`` instead of the script.
    """
    base = bridge.url.replace("ws://", "http://")
    if module:
        loader = f"""<script type="module">
  import Immortus, {{ verify }} from "{base}/immortus.mjs";
  window.Immortus = Immortus; window.verifyFromModule = verify;
  document.body.dataset.ready = "yes";
</script>"""
    else:
        loader = f"""<script src="{base}/immortus.js"></script>
<script>document.addEventListener("DOMContentLoaded", () => {{
  document.body.dataset.ready = "yes"; }});</script>"""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>immortus-async job</title>
<style>
  body {{ font: 18px sans-serif; margin: 40px; }}
  progress {{ width: 420px; height: 28px; }}
  #status {{ margin-left: 12px; font-weight: bold; }}
</style>
{loader}
</head><body>
<h1>Job <code id="job">-</code></h1>
<progress id="bar" max="1" value="0"></progress><span id="status">waiting</span>
<p id="percent">0%</p>
<script>
window.events = [];
window.follow = (jobId, token, options) => {{
  document.getElementById("job").textContent = jobId;
  const verify = window.verifyFromModule || Immortus.verify;
  window.done = verify(Object.assign({{ job_id: jobId, token: token }}, options), {{
    onProgress: (progress) => {{
      document.getElementById("bar").value = progress;
      document.getElementById("percent").textContent = Math.round(progress * 100) + "%";
      window.events.push(["progress", progress]);
    }},
    onStatus: (status) => {{
      document.getElementById("status").textContent = status;
      window.events.push(["status", status]);
    }},
  }});
}};
</script>
</body></html>"""


async def still_served(bystander: ClientConnection, strategy: RedisPubSubStrategy) -> None:
    """Assert that the ``bystander`` fixture's client still gets its job's next state."""
    state = await advance(strategy, "good", JobStatus.STARTED, progress=0.5)
    frame = await receive(bystander)
    assert (frame["job_id"], frame["seq"]) == ("good", state.seq)
