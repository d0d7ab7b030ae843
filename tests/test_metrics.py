"""Prometheus metrics: scraped from /metrics of a real bridge and a real uvicorn-served
mount while clients run, and counted by the hub, the job side and the waiters."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

import immortus_async.metrics as metrics
from immortus_async import (
    JobOptions,
    JobStatus,
    Keys,
    Leftovers,
    RedisPubSubStrategy,
    RedisServer,
    Tracker,
    begin_job,
)
from immortus_async.bridge import Bridge, serve

from .bridge.conftest import start_bridge_process
from .bridge.helpers import (
    MOUNT_PATH,
    SECRET,
    MountServer,
    advance,
    http_get,
    open_client,
    protocol_server,
    receive,
    subscribe,
)
from .bridge.test_slow_clients import _flood_until_closed, _stalled_client
from .utils import SCALE, wait_until

S = JobStatus
TOKEN = "scraper-token-0123456789"


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    """Metrics on, on a registry of this test's own; off again after it."""
    own = CollectorRegistry()
    metrics.enable(own)
    yield own
    metrics.disable()


@pytest.fixture
def strategy(redis: Redis) -> RedisPubSubStrategy:
    """The job side: writes and publishes states as a worker would."""
    return RedisPubSubStrategy(redis)


def _server(
    kind: str, redis_server: RedisServer, **options: Any
) -> contextlib.AbstractAsyncContextManager[Bridge | MountServer]:
    """The bridge, or uvicorn serving the mount, with /metrics behind ``TOKEN``."""
    return protocol_server(kind, redis_server.url, metrics_token=TOKEN, **options)


async def _subscribed(redis: Redis, job_id: str) -> bool:
    """Whether a waiter's SUBSCRIBE to the job's channel has reached Redis."""
    [(_, count)] = await redis.pubsub_numsub(Keys().channel(job_id))
    return bool(count)


async def _snapshot_reads(redis: Redis) -> int:
    """How many HMGETs (a strategy's snapshot reads) Redis has run."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


async def _more_reads(redis: Redis, before: int) -> bool:
    return await _snapshot_reads(redis) > before


def _metrics_url(server: Bridge | MountServer) -> str:
    root = MOUNT_PATH if isinstance(server, MountServer) else ""
    return f"http://127.0.0.1:{server.port}{root}/metrics"


async def _scrape(server: Bridge | MountServer) -> dict[str, float]:
    """GET /metrics as a scraper does; every sample by name and labels."""
    async with httpx.AsyncClient(timeout=10 * SCALE) as http:
        answer = await http.get(_metrics_url(server), headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["bridge", "mount"])
async def test_a_scrape_counts_what_the_clients_did(
    registry: CollectorRegistry,
    redis_server: RedisServer,
    strategy: RedisPubSubStrategy,
    kind: str,
) -> None:
    """Three clients follow a job to its end, one sends a bad token: /metrics shows three
    connections and subscriptions, every frame they got, and the error by its code."""
    await advance(strategy, "job", S.QUEUED)
    async with _server(kind, redis_server) as server:
        root = "/" if kind == "mount" else ""  # the mount's websocket root
        clients = [await open_client(server, root) for _ in range(3)]
        received = 0
        for client in clients:
            await client.send(subscribe("job"))
            assert (await receive(client))["status"] == "queued"
            received += 1
        during = await _scrape(server)
        assert during["immortus_subscriptions_open"] == 3
        assert during["immortus_connections_open{transport=websocket}"] == 3
        for status in (S.STARTED, S.FINISHED):
            await advance(strategy, "job", status)
            for client in clients:
                assert (await receive(client))["status"] == status.value
                received += 1
        await clients[0].send(subscribe("other", token="not-a-token"))
        assert (await receive(clients[0]))["code"] == "token_invalid"
        received += 1
        for client in clients:
            await client.close()
        await wait_until(lambda: server.statistics().connections == 0, message="the closes")
        after = await _scrape(server)
    assert after["immortus_connections_total{transport=websocket}"] == 3
    assert after["immortus_connections_open{transport=websocket}"] == 0
    assert after["immortus_subscriptions_total"] == 3
    assert after["immortus_subscriptions_open"] == 0
    assert after["immortus_frames_sent_total"] == received
    assert after["immortus_errors_total{code=token_invalid}"] == 1
    print(f"\n{kind}: {received} frames, scraped:")
    for name, value in sorted(after.items()):
        if name.startswith("immortus_") and "_created" not in name and value:
            print(f"  {name} {value:g}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["bridge", "mount"])
async def test_a_slow_client_closed_for_real_is_counted(
    registry: CollectorRegistry,
    redis_server: RedisServer,
    strategy: RedisPubSubStrategy,
    kind: str,
) -> None:
    """A client that reads nothing is closed (4008) once, and what it skipped is counted."""
    timeouts = {"send_timeout": 0.5 * SCALE, "close_timeout": 0.5 * SCALE}
    async with protocol_server(
        kind, redis_server.url, metrics_token=TOKEN, bridge_only={"write_limit": 1024}, **timeouts
    ) as server:
        slow = await _stalled_client(server)
        await _flood_until_closed(server, slow, strategy)
        slow.transport.abort()
        scraped = await _scrape(server)
    assert scraped["immortus_slow_client_closes_total"] == 1
    assert scraped["immortus_states_coalesced_total"] > 0


@pytest.mark.parametrize("kind", ["bridge", "mount"])
async def test_metrics_refuse_a_scraper_without_the_token(
    registry: CollectorRegistry, redis_server: RedisServer, kind: str
) -> None:
    """No Authorization: 401 with a Bearer challenge; another token: 403; no metrics shown."""
    async with _server(kind, redis_server) as server, httpx.AsyncClient() as http:
        url = _metrics_url(server)
        bare = await http.get(url)
        wrong = await http.get(url, headers={"Authorization": "Bearer another-token"})
        basic = await http.get(url, headers={"Authorization": f"Basic {TOKEN}"})
    assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Bearer")
    assert (wrong.status_code, basic.status_code) == (403, 401)
    for answer in (bare, wrong, basic):
        assert "immortus_" not in answer.text


async def test_no_metrics_path_without_a_token(redis_server: RedisServer) -> None:
    """/metrics is opt-in: a bridge started without metrics_token answers 404."""
    async with (
        serve(redis_server.url, "127.0.0.1", 0, secret=SECRET) as bridge,
        httpx.AsyncClient() as http,
    ):
        answer = await http.get(f"http://127.0.0.1:{bridge.port}/metrics")
    assert answer.status_code == 404


@pytest.mark.parametrize("token", ["", "two words", "caf\u00e9"])
def test_a_bad_metrics_token_is_refused(token: str) -> None:
    """A metrics_token that no header can carry is a ValueError at once."""
    with pytest.raises(ValueError, match="metrics_token"):
        Bridge(secret=SECRET, metrics_token=token)


async def test_a_reconnect_and_the_resync_are_counted(
    registry: CollectorRegistry, redis: Redis, strategy: RedisPubSubStrategy
) -> None:
    """CLIENT KILL of the pub/sub connection: one reconnect, one waiter resynced."""
    await advance(strategy, "job", S.STARTED)
    async with Tracker(redis, tracking_strategy="redis_pub_sub") as tracker:
        waiter = asyncio.create_task(tracker.completed("job", timeout=20 * SCALE))
        await wait_until(lambda: _subscribed(redis, "job"), message="the subscription")
        await redis.client_kill_filter(_type="pubsub")
        await wait_until(
            lambda: registry.get_sample_value("immortus_pubsub_resyncs_total") == 1,
            message="the resync",
        )
        await advance(strategy, "job", S.FINISHED)
        assert (await waiter).status is S.FINISHED
    assert registry.get_sample_value("immortus_pubsub_reconnects_total") == 1


async def test_wake_latency_is_observed_for_a_waiter_that_waited(
    registry: CollectorRegistry, redis: Redis, tracker: Tracker, strategy: RedisPubSubStrategy
) -> None:
    """A waiter woken by the end observes one latency; one that found the end does not."""
    await advance(strategy, "job", S.STARTED)
    reads = await _snapshot_reads(redis)
    waiter = asyncio.create_task(tracker.completed("job", timeout=20 * SCALE))
    # Redis has answered the waiter's snapshot (subscribed first, read after): the
    # end written now is news to it, not what it finds.
    await wait_until(lambda: _more_reads(redis, reads), message="the waiter's snapshot")
    await advance(strategy, "job", S.FINISHED)
    await waiter
    await tracker.completed("job", timeout=10 * SCALE)  # already over: no wake
    assert registry.get_sample_value("immortus_wake_latency_seconds_count") == 1
    bucket = {"le": "+Inf"}
    assert registry.get_sample_value("immortus_wake_latency_seconds_bucket", bucket) == 1


async def test_job_side_retries_and_give_ups_are_counted(registry: CollectorRegistry) -> None:
    """A job whose tracking Redis was killed: its write is retried, then given up on."""
    with RedisServer() as tracking:
        client = Redis.from_url(tracking.url)
        tracking.stop(kill=True)
        leftovers = Leftovers()
        options = JobOptions.checked(retry_for=0.3, write_timeout=0.5)
        context = await begin_job(
            "job", 1, redis=client, spec="redis_pub_sub", options=options, leftovers=leftovers
        )
        await context.finished()
        await leftovers.aclose(grace=10 * SCALE)
        await client.aclose()
    retries = registry.get_sample_value("immortus_write_retries_total")
    assert retries is not None and retries >= 1
    assert registry.get_sample_value("immortus_write_give_ups_total") == 1


def test_metrics_off_count_nothing_and_enable_moves_them() -> None:
    """Off, a hook is a no-op; enable() on a second registry moves the metrics there."""
    metrics.frame_sent()  # off: nothing to count on, nothing raised
    first, second = CollectorRegistry(), CollectorRegistry()
    try:
        assert metrics.enable(first) is first
        assert metrics.enable(first) is first  # idempotent
        metrics.frame_sent()
        metrics.enable(second)
        metrics.frame_sent()
        metrics.frame_sent()
        assert first.get_sample_value("immortus_frames_sent_total") is None
        assert second.get_sample_value("immortus_frames_sent_total") == 2
    finally:
        metrics.disable()
    assert metrics.enabled_registry() is None
    metrics.disable()  # idempotent


def test_enable_without_prometheus_client_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without prometheus-client, enable() raises ImportError with the install command."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if absent
    with pytest.raises(ImportError, match=r"pip install 'immortus-async\[metrics\]'"):
        metrics.enable()
    assert metrics.enabled_registry() is None


async def test_the_bridge_command_serves_metrics_with_the_token_from_the_environment(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``IMMORTUS_METRICS_TOKEN=... immortus-async bridge`` serves /metrics behind it."""
    monkeypatch.setenv("IMMORTUS_METRICS_TOKEN", TOKEN)
    running = await start_bridge_process(redis_server.url)
    try:
        status, _, body = await http_get(running, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
        refused, _, _ = await http_get(running, "/metrics")
    finally:
        assert await running.stop() == 0
    assert (status, refused) == (200, 401)
    assert b"immortus_frames_sent_total 0.0" in body


async def test_the_fallback_mode_in_use_is_shown(
    registry: CollectorRegistry, redis: Redis, strategy: RedisPubSubStrategy
) -> None:
    """Watching a job follows arq's records by client-side caching; where Redis refuses
    it, by polling, until the server sends keyspace events: the gauge says which."""
    pytest.importorskip("arq", reason="arq's records are the fallback watched here")
    await advance(strategy, "job", S.STARTED)

    async def watch_once() -> dict[str, float | None]:
        async with Tracker(redis, tracking_strategy="redis_pub_sub") as tracker:
            states = tracker.watch("job")
            await anext(states)
            await states.aclose()  # type: ignore[attr-defined]
        return {
            mode: registry.get_sample_value(
                "immortus_fallback_mode", {"queue": "arq", "mode": mode}
            )
            for mode in ("client-tracking", "keyspace", "poll")
        }

    assert await watch_once() == {"client-tracking": 1, "keyspace": 0, "poll": 0}
    await redis.execute_command("ACL", "SETUSER", "default", "-client|tracking")
    assert await watch_once() == {"client-tracking": 0, "keyspace": 0, "poll": 1}
    await redis.config_set("notify-keyspace-events", "KA")
    assert await watch_once() == {"client-tracking": 0, "keyspace": 1, "poll": 0}
