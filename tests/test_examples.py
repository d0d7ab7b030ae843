"""The examples run as a user would run them, against the test's Redis."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import os
import secrets
import sqlite3
import subprocess
import sys
from contextlib import AsyncExitStack, closing
from pathlib import Path

import httpx
from playwright.async_api import Browser
from redis import Redis

from immortus_async import JobState, JobStatus, RedisServer

from .utils import ARTIFACTS, Spawned, free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def enqueue_and_work(folder: Path, env: dict[str, str]) -> list[str]:
    """Run the example's ``enqueue.py``, then, once it has enqueued, a burst worker;
    return what the script printed after its ``enqueued <id>`` line."""
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
        worker = subprocess.run(
            [sys.executable, "-m", "arq", "--burst", "worker.WorkerSettings"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert worker.returncode == 0, worker.stderr
        out, err = script.communicate(timeout=30)
    assert script.returncode == 0, err
    return out.splitlines()


def test_arq_basic_enqueues_follows_and_prints_the_final_state(redis_server: RedisServer) -> None:
    """examples/arq_basic: the script enqueues, the worker runs it, the script prints the end."""
    env = {**os.environ, "REDIS_URL": redis_server.url}
    *progress, final_json, result = enqueue_and_work(EXAMPLES / "arq_basic", env)
    assert progress and all(line.startswith("started ") for line in progress)
    final = JobState.from_json(final_json)
    assert (final.status, final.progress) == (JobStatus.FINISHED, 1.0)
    assert final.meta == {"rows_done": 20}
    assert result == "result: 20"


def test_custom_strategy_tracks_a_job_in_sqlite(redis_server: RedisServer, tmp_path: Path) -> None:
    """examples/custom_strategy: SQLite tracks the job; completed() polls it to its end."""
    database = tmp_path / "tracking.sqlite3"
    env = {**os.environ, "REDIS_URL": redis_server.url, "TRACKING_DB": str(database)}
    (final_json,) = enqueue_and_work(EXAMPLES / "custom_strategy", env)
    final = JobState.from_json(final_json)
    assert (final.status, final.meta) == (JobStatus.FINISHED, {"status": "finished"})
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT job_id, status FROM tracked_jobs").fetchall() == [
            (final.job_id, "finished")
        ]
    with Redis.from_url(redis_server.url) as redis:
        assert not redis.keys("immortus:*"), "the job is tracked in SQLite only"


@pytest.mark.timeout(90)
async def test_fastapi_app_end_to_end(redis_server: RedisServer, browser: Browser) -> None:
    """examples/fastapi_app: a click enqueues, the bar follows, the custom verify adds."""
    folder = EXAMPLES / "fastapi_app"
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    env = {**os.environ, "REDIS_URL": redis_server.url, "IMMORTUS_SECRET": secrets.token_hex(32)}
    async with AsyncExitStack() as stack:

        async def python_m(*command: str, cwd: Path | None = None) -> Spawned:
            spawned = await Spawned.start(sys.executable, "-m", *command, cwd=cwd, env=env)
            return await stack.enter_async_context(spawned)

        bridge = await python_m(
            "immortus_async.cli", "bridge", "--redis", redis_server.url, "--port", "0",
            "--allowed-origin", origin,
        )  # fmt: skip
        bridge_port = (await bridge.expect(r"listening on ws://127.0.0.1:(\d+)")).group(1)
        env["BRIDGE_URL"] = f"http://127.0.0.1:{bridge_port}"
        worker = await python_m("arq", "worker.WorkerSettings", cwd=folder)
        app = await python_m("uvicorn", "app:app", "--port", str(port), cwd=folder)
        await app.expect("Application startup complete")

        page = await browser.new_page()
        await page.goto(origin + "/")
        await page.click("#build")
        link = await page.wait_for_selector("#result a", timeout=30_000)
        assert link is not None
        assert await page.inner_text("#status") == "finished"
        assert await page.eval_on_selector("#bar", "(bar) => bar.value") == 1
        assert await page.inner_text("#result") == "Download the report (12 pages, 0 left)"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "fastapi-app.png"))
        download = origin + str(await link.get_attribute("href"))
        job_id = download.split("/")[-2]
        async with httpx.AsyncClient() as client:
            report = await client.get(download)
            refused = await client.get(f"{origin}/reports/{job_id}/verify?token=not-a-token")
        assert report.text.splitlines()[-1] == "page 12: all good"
        assert refused.status_code == 403
        assert "build_report" in (await worker.expect(rf"{job_id}:build_report ●")).group(0)
        for process in (app, worker, bridge):
            await process.stop()
