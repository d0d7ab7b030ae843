"""immortus.js in real headless Chromium: live progress, and the polling fallback."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Page, WebSocketRoute

from immortus_async import JobStatus, RedisPubSubStrategy, RedisServer
from immortus_async.bridge import Bridge, serve

from ..utils import ARTIFACTS
from .helpers import SECRET, PageServer, advance, follow_page, token

S = JobStatus


@pytest.fixture
async def site_bridge(redis_server: RedisServer, page_server: PageServer) -> AsyncIterator[Bridge]:
    """A bridge that allows the test page's origin (and only it, besides its own)."""
    async with serve(
        redis_server.url, "127.0.0.1", 0, secret=SECRET, allowed_origins=[page_server.origin]
    ) as bridge:
        yield bridge


async def _open(page: Page, page_server: PageServer, bridge: Bridge, *, module: bool) -> None:
    page_server.html = follow_page(bridge, module=module)
    await page.goto(page_server.origin + "/")
    await page.wait_for_selector("body[data-ready=yes]", timeout=10_000)


async def _wait_progress(page: Page, value: float) -> None:
    await page.wait_for_function(
        f"document.getElementById('bar').value === {value}", timeout=10_000
    )


async def _result(page: Page) -> Any:
    return await page.evaluate("window.done")


@pytest.mark.timeout(90)
async def test_page_follows_progress_to_finished(
    page: Page, page_server: PageServer, site_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """A page loads /immortus.js and shows live progress until finished; screenshot saved."""
    job_id = "browser-job"
    await advance(strategy, job_id, S.QUEUED)
    await _open(page, page_server, site_bridge, module=False)
    await page.evaluate("([id, t]) => follow(id, t)", [job_id, token(job_id)])
    await page.wait_for_function("window.events.length > 0", timeout=10_000)
    await advance(strategy, job_id, S.STARTED)
    for progress in (0.25, 0.62):
        await advance(strategy, job_id, S.STARTED, progress=progress)
        await _wait_progress(page, progress)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "bridge-progress.png"))
    await advance(strategy, job_id, S.FINISHED)
    state = await _result(page)
    await page.screenshot(path=str(ARTIFACTS / "bridge-finished.png"))
    assert (state["status"], state["completed"], state["progress"]) == ("finished", True, 1.0)
    events = await page.evaluate("window.events")
    assert [e[1] for e in events if e[0] == "status"] == ["queued", "started", "finished"]
    assert [e[1] for e in events if e[0] == "progress"] == [0.25, 0.62, 1.0]
    assert await page.inner_text("#status") == "finished"


@pytest.mark.timeout(90)
async def test_page_without_websocket_polls_verify(
    page: Page, page_server: PageServer, site_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """With WebSocket deleted, the ES module client polls /verify to the terminal state."""
    job_id = "polled-job"
    await advance(strategy, job_id, S.STARTED, progress=0.1)
    await page.add_init_script("delete window.WebSocket")
    await _open(page, page_server, site_bridge, module=True)
    await page.evaluate("([id, t]) => follow(id, t, { pollInterval: 50 })", [job_id, token(job_id)])
    await _wait_progress(page, 0.1)
    await advance(strategy, job_id, S.STARTED, progress=0.7)
    await _wait_progress(page, 0.7)
    await advance(strategy, job_id, S.FAILED, error="disk full")
    state = await _result(page)
    assert (state["status"], state["error"]) == ("failed", "disk full")
    assert await page.evaluate("typeof WebSocket") == "undefined"


@pytest.mark.timeout(60)
async def test_a_refused_token_rejects_the_promise(
    page: Page, page_server: PageServer, site_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """verify() rejects with an ImmortusError carrying the bridge's code for a bad token."""
    await advance(strategy, "j", S.STARTED)
    await _open(page, page_server, site_bridge, module=False)
    code = await page.evaluate(
        "([t]) => Immortus.verify({ job_id: 'j', token: t }).then(() => 'resolved', e => e.code)",
        [token("another-job")],
    )
    assert code == "token_invalid"


@pytest.mark.timeout(60)
async def test_a_token_function_renews_an_expired_token(
    page: Page, page_server: PageServer, site_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """A token given as an async function is called again when the token expires."""
    job_id = "renewed"
    await advance(strategy, job_id, S.STARTED)
    await _open(page, page_server, site_bridge, module=False)
    await page.evaluate(
        """([id, first, second]) => {
            window.tokens = [first, second];
            window.calls = 0;
            const next = async () => window.tokens[Math.min(window.calls++, 1)];
            follow(id, next);
        }""",
        [job_id, token(job_id, ttl=1.5), token(job_id)],
    )
    await page.wait_for_function("window.calls >= 2", timeout=10_000)
    await advance(strategy, job_id, S.FINISHED)
    assert (await _result(page))["status"] == "finished"


@pytest.mark.timeout(60)
async def test_create_posts_json_and_the_page_follows_the_new_job(
    page: Page, page_server: PageServer, site_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """Immortus.create POSTs the data as JSON and resolves to the app's {job_id, token}."""
    page_server.created = {"job_id": "created-1", "token": token("created-1")}
    await advance(strategy, "created-1", S.QUEUED)
    await _open(page, page_server, site_bridge, module=False)
    created = await page.evaluate(
        """async () => {
            const job = await Immortus.create("/jobs", { rows: 3 });
            follow(job.job_id, job.token);
            return job;
        }"""
    )
    assert created == page_server.created and page_server.posted == [{"rows": 3}]
    await page.wait_for_function("document.getElementById('status').textContent === 'queued'")
    await advance(strategy, "created-1", S.FINISHED)
    assert (await _result(page))["job_id"] == "created-1"


@pytest.mark.timeout(60)
async def test_page_falls_back_to_polling_when_websockets_keep_failing(
    page: Page, page_server: PageServer, site_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """Every websocket closes at once (a proxy that breaks them): the client polls /verify."""
    closed: list[str] = []

    async def refuse(socket: WebSocketRoute) -> None:
        closed.append(socket.url)
        await socket.close()

    await page.route_web_socket(re.compile(".*"), refuse)
    job_id = "behind-a-bad-proxy"
    await advance(strategy, job_id, S.STARTED, progress=0.4)
    await _open(page, page_server, site_bridge, module=False)
    await page.evaluate(
        "([id, t]) => follow(id, t, { backoffMin: 10, pollInterval: 50 })",
        [job_id, token(job_id)],
    )
    await _wait_progress(page, 0.4)
    await advance(strategy, job_id, S.FINISHED)
    assert (await _result(page))["status"] == "finished"
    assert len(closed) == 4, "socketFailures (4) attempts, then polling"
