"""The examples run as a user would run them, against the test's Redis."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import os
import re
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import httpx
from playwright.async_api import Browser
from redis import Redis

from immortus_async import JobState, JobStatus, RedisServer

from .utils import ARTIFACTS, Spawned, enqueue_and_work, free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ARQ_BURST = [sys.executable, "-m", "arq", "--burst", "worker.WorkerSettings"]


def test_arq_basic_enqueues_follows_and_prints_the_final_state(redis_server: RedisServer) -> None:
    """examples/arq_basic: the script enqueues, the worker runs it, the script prints the end."""
    env = {**os.environ, "REDIS_URL": redis_server.url}
    *progress, final_json, result = enqueue_and_work(EXAMPLES / "arq_basic", env, ARQ_BURST)
    assert progress and all(line.startswith("started ") for line in progress)
    final = JobState.from_json(final_json)
    assert (final.status, final.progress) == (JobStatus.FINISHED, 1.0)
    assert final.meta == {"rows_done": 20}
    assert result == "result: 20"


def test_custom_strategy_tracks_a_job_in_sqlite(redis_server: RedisServer, tmp_path: Path) -> None:
    """examples/custom_strategy: SQLite tracks the job; completed() polls it to its end."""
    database = tmp_path / "tracking.sqlite3"
    env = {**os.environ, "REDIS_URL": redis_server.url, "TRACKING_DB": str(database)}
    (final_json,) = enqueue_and_work(EXAMPLES / "custom_strategy", env, ARQ_BURST)
    final = JobState.from_json(final_json)
    assert (final.status, final.meta) == (JobStatus.FINISHED, {"status": "finished"})
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT job_id, status FROM tracked_jobs").fetchall() == [
            (final.job_id, "finished")
        ]
    with Redis.from_url(redis_server.url) as redis:
        assert not redis.keys("immortus:*"), "the job is tracked in SQLite only"


@pytest.mark.timeout(120)
async def test_fastapi_app_end_to_end(redis_server: RedisServer, browser: Browser) -> None:
    """examples/fastapi_app in one uvicorn process: each user logs in, starts a report,
    sees it in "my jobs" until it finishes with its result, and never sees the
    other's; a running report is cancelled; no token is ever in a URL, so none is in
    uvicorn's access log."""
    folder = EXAMPLES / "fastapi_app"
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    env = {**os.environ, "REDIS_URL": redis_server.url}
    env.pop("IMMORTUS_SECRET", None)  # the app's login decides: no tokens at all
    command = (sys.executable, "-m", "uvicorn", "app:app", "--port", str(port))
    async with await Spawned.start(*command, cwd=folder, env=env) as app:
        await app.expect("Application startup complete")
        ARTIFACTS.mkdir(exist_ok=True)
        users = {}
        for user, password in (("ada", "lovelace"), ("bob", "builder")):
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(origin + "/")
            await page.fill("#user", user)
            await page.fill("#password", password)
            await page.click("#login")
            await page.wait_for_selector("#build")
            await page.click("#build")
            # The row appears when the feed tells of the job: queued, then on to finished.
            done = await page.wait_for_selector('#jobs li[data-status="finished"]', timeout=30_000)
            assert done is not None
            job_id = await done.get_attribute("data-job")
            assert job_id is not None
            assert await done.eval_on_selector("progress", "(bar) => bar.value") == 1
            report = await done.eval_on_selector(".report pre", "(pre) => pre.textContent")
            assert report.splitlines()[-1] == "page 12: all good", "the result, with the end"
            assert await page.locator("#jobs li").count() == 1, "only this user's job"
            users[user] = (job_id, page, context)
        ada_job, ada_page, ada_context = users["ada"]
        bob_job, bob_page, bob_context = users["bob"]
        # Ada's feed went on while bob worked: his job never reached it.
        assert await ada_page.locator(f'#jobs li[data-job="{bob_job}"]').count() == 0
        # A long report, cancelled while it runs: the feed brings its end.
        await ada_page.fill("#pages", "500")
        await ada_page.click("#build")
        running = await ada_page.wait_for_selector('#jobs li[data-status="started"]')
        assert running is not None
        long_job = await running.get_attribute("data-job")
        await running.eval_on_selector(".cancel", "(button) => button.click()")
        await ada_page.wait_for_selector(f'#jobs li[data-job="{long_job}"][data-status="aborted"]')
        await ada_page.screenshot(path=str(ARTIFACTS / "fastapi-app.png"))
        assert await bob_page.locator("#jobs li").count() == 1
        cookies = {}
        for user, (_, _, context) in users.items():
            cookies[user] = {c["name"]: c["value"] for c in await context.cookies()}
        async with httpx.AsyncClient(cookies=cookies["bob"]) as bob:
            feed = await bob.get(f"{origin}/immortus/owners/ada/events")
            job = await bob.get(f"{origin}/immortus/jobs/{ada_job}")
            abort = await bob.post(f"{origin}/immortus/jobs/{ada_job}/abort")
        for answer in (feed, job, abort):
            assert (answer.status_code, answer.json()["code"]) == (404, "not_found")
        for context in (ada_context, bob_context):
            await context.close()
        await app.stop()
    access = [line for line in app.lines if '"GET ' in line or '"POST ' in line]
    assert any("/immortus/immortus.js" in line for line in access), app.lines
    assert any("/abort" in line for line in access), "the cancel went through the mount"
    assert not [line for line in access if "token" in line or re.search(r"eyJ[\w-]+\.", line)]
