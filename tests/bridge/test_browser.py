"""immortus.js in real headless Chromium: live progress, and the polling fallback."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Page, WebSocketRoute
from redis.asyncio import Redis

from immortus_async import (
    JobState,
    JobStatus,
    JobUpdate,
    RedisPubSubStrategy,
    RedisServer,
    RedisUnavailable,
    Tracker,
    mint_owner_token,
)
from immortus_async.bridge import Bridge, serve

from ..utils import ARTIFACTS, wait_until
from .helpers import SECRET, MountServer, PageServer, advance, follow_page, token

S = JobStatus


@pytest.fixture(params=["bridge", "mount"])
async def site_bridge(
    request: pytest.FixtureRequest, redis_server: RedisServer, page_server: PageServer
) -> AsyncIterator[Bridge | MountServer]:
    """A bridge, or uvicorn serving the mount, that allows the test page's origin (and
    only it, besides its own). The page loads immortus.js from it."""
    allowed = [page_server.origin]
    if request.param == "mount":
        async with Tracker(redis_server.url) as tracker:
            server = await MountServer(tracker, secret=SECRET, allowed_origins=allowed).start()
            yield server
            await server.stop()
        return
    async with serve(
        redis_server.url, "127.0.0.1", 0, secret=SECRET, allowed_origins=allowed
    ) as bridge:
        yield bridge


def _requests(page: Page) -> list[str]:
    """The URLs the page fetches from now on (the event stream, /verify)."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


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
async def test_page_without_websocket_follows_events_or_polls_verify(
    page: Page, page_server: PageServer, site_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """With WebSocket deleted, the ES module client follows the job to its end over the
    mount's event stream, or, from the bridge (which serves none), by polling /verify."""
    job_id = "polled-job"
    await advance(strategy, job_id, S.STARTED, progress=0.1)
    await page.add_init_script("delete window.WebSocket")
    urls = _requests(page)
    await _open(page, page_server, site_bridge, module=True)
    await page.evaluate("([id, t]) => follow(id, t, { pollInterval: 50 })", [job_id, token(job_id)])
    await _wait_progress(page, 0.1)
    await advance(strategy, job_id, S.STARTED, progress=0.7)
    await _wait_progress(page, 0.7)
    await advance(strategy, job_id, S.FAILED, error="disk full")
    state = await _result(page)
    assert (state["status"], state["error"]) == ("failed", "disk full")
    assert await page.evaluate("typeof WebSocket") == "undefined"
    streams = [url for url in urls if f"/jobs/{job_id}/events" in url]
    polls = [url for url in urls if "/verify/" in url]
    if isinstance(site_bridge, MountServer):
        assert (len(streams), polls) == (1, []), "one event stream carried it all"
    else:
        assert len(streams) == 1 and polls, "the bridge has no event stream: polling"


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
async def test_a_job_authorize_refuses_rejects_the_promise_with_not_found(
    page: Page, page_server: PageServer, redis_server: RedisServer, strategy: RedisPubSubStrategy
) -> None:
    """Against a mount whose authorize refuses the job, verify() rejects with not_found
    (the websocket's answer) instead of retrying for ever."""
    await advance(strategy, "hidden", S.STARTED)
    async with Tracker(redis_server.url) as tracker:
        server = MountServer(
            tracker, authorize=lambda scope, job_id: False, allowed_origins=[page_server.origin]
        )
        await server.start()
        try:
            await _open(page, page_server, server, module=False)
            code = await page.evaluate(
                """() => Immortus.verify({ job_id: "hidden" })
                    .then(() => "resolved", (error) => error.code)"""
            )
        finally:
            await server.stop()
    assert code == "not_found"


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


async def _behind_a_proxy(
    page: Page,
    page_server: PageServer,
    site_bridge: Bridge,
    strategy: RedisPubSubStrategy,
    *,
    cut_events: bool,
) -> list[str]:
    """Follow a job to its end while every websocket closes at once (and, with
    ``cut_events``, every event stream is cut): what the client tried, in order
    ("websocket", "events", "verify")."""
    steps: list[str] = []

    async def refuse(socket: WebSocketRoute) -> None:
        steps.append("websocket")
        await socket.close()

    await page.route_web_socket(re.compile(".*"), refuse)
    if cut_events:
        await page.route(re.compile(".*/events.*"), lambda route: route.abort())

    def fetched(url: str) -> None:
        if "/events" in url or "/verify/" in url:
            steps.append("events" if "/events" in url else "verify")

    page.on("request", lambda request: fetched(request.url))
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
    return steps


@pytest.mark.timeout(60)
async def test_page_falls_back_when_websockets_keep_failing(
    page: Page, page_server: PageServer, site_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """Every websocket closes at once (a proxy that breaks them): after socketFailures
    the client reads the event stream (the mount), else polls /verify (the bridge)."""
    steps = await _behind_a_proxy(page, page_server, site_bridge, strategy, cut_events=False)
    assert steps.count("websocket") == 4, "socketFailures (4) attempts, then the next transport"
    assert ("verify" in steps) is not isinstance(site_bridge, MountServer)


@pytest.mark.timeout(60)
async def test_page_polls_when_websockets_and_event_streams_both_fail(
    page: Page, page_server: PageServer, site_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """Websockets closed and event streams cut (a proxy that breaks both): the client
    polls /verify to the end, in that order: websocket, event stream, polling."""
    steps = await _behind_a_proxy(page, page_server, site_bridge, strategy, cut_events=True)
    assert steps[:4] == ["websocket"] * 4 and steps[4] == "events" and steps[-1] == "verify"
    assert set(steps[steps.index("verify") :]) == {"verify"}


@pytest.mark.timeout(60)
async def test_an_aborted_signal_rejects_verify_and_closes_the_connection(
    page: Page, page_server: PageServer, site_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """verify(job, {signal}) rejects with the signal's reason once it aborts, and lets
    go of its connection: the server counts no connection left."""
    await advance(strategy, "cancelled", S.STARTED)
    await _open(page, page_server, site_bridge, module=False)
    await page.evaluate(
        """([t]) => {
            window.controller = new AbortController();
            window.settled = Immortus.verify(
                { job_id: "cancelled", token: t },
                { signal: controller.signal, onState: () => { window.seen = true; } },
            ).then(() => "resolved", (error) => error.name);
        }""",
        [token("cancelled")],
    )
    await page.wait_for_function("window.seen === true", timeout=10_000)
    assert site_bridge.statistics().connections == 1
    await page.evaluate("controller.abort()")
    assert await page.evaluate("window.settled") == "AbortError"
    await wait_until(lambda: site_bridge.statistics().connections == 0, message="the close")
    already = await page.evaluate(
        """() => Immortus.verify({ job_id: "x" }, { signal: AbortSignal.abort() })
            .then(() => "resolved", (error) => error.name)"""
    )
    assert already == "AbortError"


@contextlib.asynccontextmanager
async def _history_lost(
    page: Page,
    page_server: PageServer,
    redis_server: RedisServer,
    redis: Redis,
    strategy: RedisPubSubStrategy,
    job_id: str,
    *,
    before: list[JobStatus],
    after: list[tuple[JobStatus, dict[str, Any]]],
) -> AsyncIterator[None]:
    """The page follows ``job_id`` through ``before``; with the bridge down, Redis
    loses the job (FLUSHALL) and its new history is written from ``after``; then a
    bridge on the same port takes the page's resubscription (with since_seq).

    The page's promise, settled or rejected, lands in ``window.settled``.
    """
    for status in before:
        await advance(strategy, job_id, status)
    allowed = [page_server.origin]
    async with serve(
        redis_server.url, "127.0.0.1", 0, secret=SECRET, allowed_origins=allowed
    ) as first:
        port = first.port
        await _open(page, page_server, first, module=False)
        # Websocket only: the resubscription with since_seq is what is tested.
        options = {"url": first.url, "backoffMin": 10, "socketFailures": 1000}
        await page.evaluate(
            """([id, t, options]) => {
                follow(id, t, options);
                window.settled = window.done.then(
                    (state) => ({ state }), (error) => ({ code: error.code }));
            }""",
            [job_id, token(job_id), options],
        )
        await page.wait_for_function(  # the snapshot: the last state of before
            f"window.events.some(e => e[0] === 'status' && e[1] === '{before[-1].value}')",
            timeout=10_000,
        )
    await redis.flushall()
    for status, fields in after:
        await advance(strategy, job_id, status, **fields)
    async with serve(redis_server.url, "127.0.0.1", port, secret=SECRET, allowed_origins=allowed):
        yield


BEFORE = [S.QUEUED, S.STARTED, S.STARTED]  # the page has seq 3


@pytest.mark.timeout(60)
async def test_a_lower_seq_terminal_state_after_history_loss_settles_verify(
    page: Page,
    page_server: PageServer,
    redis_server: RedisServer,
    redis: Redis,
    strategy: RedisPubSubStrategy,
) -> None:
    """The page saw seq 3; Redis lost the job, whose new history ended at seq 2: the
    page's resubscription (since_seq 3) gets that terminal state and verify resolves."""
    after = [(S.STARTED, {}), (S.FINISHED, {})]
    async with _history_lost(
        page, page_server, redis_server, redis, strategy, "reborn", before=BEFORE, after=after
    ):
        settled = await page.evaluate("window.settled")
    assert (settled["state"]["status"], settled["state"]["seq"]) == ("finished", 2)


@pytest.mark.timeout(60)
async def test_lower_seq_states_after_history_loss_reach_the_page(
    page: Page,
    page_server: PageServer,
    redis_server: RedisServer,
    redis: Redis,
    strategy: RedisPubSubStrategy,
) -> None:
    """The page saw seq 3; the job's new history is at seq 1 with progress 0.8: the page
    shows that progress, then the end at seq 2 resolves verify."""
    after = [(S.STARTED, {"progress": 0.8})]
    async with _history_lost(
        page, page_server, redis_server, redis, strategy, "renewed", before=BEFORE, after=after
    ):
        await _wait_progress(page, 0.8)
        await advance(strategy, "renewed", S.FINISHED)
        settled = await page.evaluate("window.settled")
    assert (settled["state"]["status"], settled["state"]["seq"]) == ("finished", 2)


@pytest.mark.timeout(60)
async def test_a_job_redis_lost_rejects_verify_with_job_lost(
    page: Page,
    page_server: PageServer,
    redis_server: RedisServer,
    redis: Redis,
    strategy: RedisPubSubStrategy,
) -> None:
    """The page followed a job that Redis then lost (nothing written since): its
    resubscription is answered job_lost, and verify rejects with that code."""
    async with _history_lost(
        page, page_server, redis_server, redis, strategy, "lost", before=BEFORE, after=[]
    ):
        settled = await page.evaluate("window.settled")
    assert settled == {"code": "job_lost"}


@pytest.mark.timeout(60)
async def test_a_refused_origin_rejects_verify_with_origin_not_allowed(
    page: Page, page_server: PageServer, bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """A bridge that does not allow the page's origin: the websocket handshakes fail
    (the browser hides why), /verify's readable 403 says origin_not_allowed, and
    verify rejects with it instead of retrying for ever."""
    await advance(strategy, "foreign", S.STARTED)
    await _open(page, page_server, bridge, module=False)
    code = await page.evaluate(
        """([t]) => Immortus.verify({ job_id: "foreign", token: t, backoffMin: 10 })
            .then(() => "resolved", (error) => error.code)""",
        [token("foreign")],
    )
    assert code == "origin_not_allowed"


class UnreachableFirst(RedisPubSubStrategy):
    """Redis pub/sub tracking whose first watch of a job yields the snapshot, then
    raises RedisUnavailable, as the hub does once Redis has been out of reach too long."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.watched: list[str] = []

    def watch(self, job_id: str, **options: Any) -> AsyncIterator[JobState]:
        self.watched.append(job_id)
        if self.watched.count(job_id) > 1:
            return super().watch(job_id, **options)
        return self._unreachable(job_id)

    async def _unreachable(self, job_id: str) -> AsyncIterator[JobState]:
        yield await self.status(job_id)
        raise RedisUnavailable("Redis could not be reached for 30s")


@pytest.mark.timeout(60)
async def test_redis_unavailable_is_retried_until_the_end(
    page: Page, page_server: PageServer, redis_server: RedisServer, redis: Redis
) -> None:
    """A subscription ended by redis_unavailable is subscribed again after a backoff,
    and verify resolves with the terminal state."""
    strategy = UnreachableFirst(redis)
    await advance(strategy, "retried", S.STARTED, progress=0.3)
    async with serve(
        redis_server.url,
        "127.0.0.1",
        0,
        secret=SECRET,
        allowed_origins=[page_server.origin],
        tracking_strategy=strategy,
    ) as bridge:
        await _open(page, page_server, bridge, module=False)
        await page.evaluate(
            "([id, t]) => follow(id, t, { backoffMin: 10 })", ["retried", token("retried")]
        )
        await _wait_progress(page, 0.3)
        await wait_until(lambda: strategy.watched.count("retried") == 2, message="the retry")
        await advance(strategy, "retried", S.FINISHED)
        assert (await _result(page))["status"] == "finished"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("websocket", [True, False], ids=["websocket", "events"])
async def test_a_page_follows_an_owners_feed(
    page: Page,
    page_server: PageServer,
    site_bridge: Bridge,
    strategy: RedisPubSubStrategy,
    websocket: bool,
) -> None:
    """Immortus.feed shows the owner's job from the snapshot, then a new job to its end;
    without WebSocket, over the mount's event stream (the bridge has none: it rejects)."""
    await strategy.apply(JobUpdate(job_id="old", status=S.QUEUED, attempt=0), owner="ada")
    if not websocket:
        await page.add_init_script("delete window.WebSocket")
    await _open(page, page_server, site_bridge, module=True)
    feed_token = mint_owner_token("ada", SECRET)
    await page.evaluate(
        """(t) => {
          window.seen = {};
          window.ended = Immortus.feed({ owner: "ada", token: t, socketFailures: 1 }, {
            onState: (state) => { window.seen[state.job_id] = state.status; },
          }).catch((error) => error.code);
        }""",
        feed_token,
    )
    if not websocket and not isinstance(site_bridge, MountServer):
        assert await page.evaluate("window.ended") == "not_found"
        return
    await page.wait_for_function("window.seen.old === 'queued'", timeout=10_000)
    await strategy.apply(JobUpdate(job_id="new", status=S.QUEUED, attempt=0), owner="ada")
    await strategy.apply(JobUpdate(job_id="theirs", status=S.QUEUED, attempt=0), owner="bob")
    await page.wait_for_function("window.seen.new === 'queued'", timeout=10_000)
    await advance(strategy, "new", S.FINISHED)
    await page.wait_for_function("window.seen.new === 'finished'", timeout=10_000)
    assert await page.evaluate("Object.keys(window.seen).sort()") == ["new", "old"]
