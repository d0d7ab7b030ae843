"""Plain HTTP on the bridge's port: /verify, /healthz, the browser client, errors."""

from __future__ import annotations

import json
import logging

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from immortus_async import JobStatus, RedisPubSubStrategy, RedisServer, RedisUnavailable
from immortus_async.bridge import Bridge, serve

from ..utils import free_port, wait_until
from .helpers import (
    OTHER_SECRET,
    SECRET,
    MountServer,
    advance,
    expired_token,
    http_get,
    still_served,
    token,
)

S = JobStatus


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("", 401, "token_required"),
        ("?token=", 401, "token_required"),
        (f"?token={token('7', secret=OTHER_SECRET)}", 403, "token_invalid"),
        (f"?token={token('8')}", 403, "token_invalid"),
        (f"?token={expired_token('7')}", 403, "token_expired"),
    ],
    ids=["no token", "empty token", "forged", "another job", "expired"],
)
async def test_verify_refuses_without_a_good_token(
    bridge: Bridge,
    strategy: RedisPubSubStrategy,
    bystander: ClientConnection,
    query: str,
    status: int,
    code: str,
) -> None:
    """/verify answers 401 without a token and 403 with a bad one; websockets go on."""
    got, headers, body = await http_get(bridge, f"/verify/7{query}")
    assert (got, headers["content-type"]) == (status, "application/json")
    assert json.loads(body)["code"] == code
    await still_served(bystander, strategy)


async def test_verify_serves_allowed_origins_with_cors_and_refuses_others(
    redis_server: RedisServer, strategy: RedisPubSubStrategy
) -> None:
    """An allowed Origin gets the state and its CORS header; a foreign one gets 403."""
    await advance(strategy, "7", S.STARTED, progress=0.5)
    async with serve(
        redis_server.url, "127.0.0.1", 0, secret=SECRET, allowed_origins=["https://app.x"]
    ) as bridge:
        path = f"/verify/7?token={token('7')}"
        status, headers, body = await http_get(bridge, path, {"Origin": "https://app.x"})
        assert (status, headers["access-control-allow-origin"]) == (200, "https://app.x")
        assert json.loads(body)["progress"] == 0.5
        status, _, body = await http_get(bridge, path, {"Origin": "https://evil.x"})
        assert (status, json.loads(body)["code"]) == (403, "origin_not_allowed")


async def test_verify_of_unknown_and_invalid_job_ids(bridge: Bridge) -> None:
    """A job never seen reads "unknown" (200); a job id with a control character is 400."""
    status, _, body = await http_get(bridge, f"/verify/nope?token={token('nope')}")
    assert (status, json.loads(body)["status"]) == (200, "unknown")
    status, _, body = await http_get(bridge, f"/verify/a%0Ab?token={token('a')}")
    if isinstance(bridge, MountServer):
        # Starlette's Mount routes no path with a newline: the app's own 404.
        assert status == 404
        return
    assert (status, json.loads(body)["code"]) == (400, "invalid_job_id")


async def test_verify_answers_503_while_redis_is_down(
    bridge: Bridge, redis_server: RedisServer
) -> None:
    """/verify says redis_unavailable (503) instead of hanging when Redis is down."""
    redis_server.stop(kill=True)
    status, _, body = await http_get(bridge, f"/verify/7?token={token('7')}")
    assert (status, json.loads(body)["code"]) == (503, "redis_unavailable")


async def test_insecure_bridge_needs_no_token(
    redis_server: RedisServer, strategy: RedisPubSubStrategy
) -> None:
    """With insecure_no_auth, /verify answers without a token."""
    await advance(strategy, "7", S.QUEUED)
    async with serve(redis_server.url, "127.0.0.1", 0, insecure_no_auth=True) as bridge:
        status, _, body = await http_get(bridge, "/verify/7")
    assert (status, json.loads(body)["status"]) == (200, "queued")


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/immortus.js", "text/javascript; charset=utf-8"),
        ("/immortus.mjs", "text/javascript; charset=utf-8"),
        ("/immortus.d.ts", "application/typescript; charset=utf-8"),
    ],
)
async def test_the_browser_client_is_served_to_any_origin(
    bridge: Bridge, path: str, content_type: str
) -> None:
    """immortus.js, immortus.mjs and their types are cacheable and loadable cross-origin."""
    status, headers, body = await http_get(bridge, path, {"Origin": "https://anywhere.x"})
    assert status == 200
    assert headers["content-type"] == content_type
    assert headers["access-control-allow-origin"] == "*"
    assert b"Immortus" in body


async def test_unknown_paths_are_404(bridge: Bridge) -> None:
    """Any other path is a JSON 404."""
    status, _, body = await http_get(bridge, "/admin")
    assert (status, json.loads(body)["code"]) == (404, "not_found")


async def test_a_refused_origin_is_logged_once_and_readable_by_the_page(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    """A foreign origin: 403 origin_not_allowed with CORS headers, one WARNING naming the flag."""
    caplog.set_level(logging.WARNING, logger="immortus_async.bridge")
    for path in [f"/verify/7?token={token('7')}", "/jobs/7", f"/verify/8?token={token('8')}"]:
        status, headers, body = await http_get(bridge, path, {"Origin": "https://evil.x"})
        assert (status, json.loads(body)["code"]) == (403, "origin_not_allowed")
        assert headers["access-control-allow-origin"] == "https://evil.x"
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    option = "--allowed-origin https://evil.x"
    if isinstance(bridge, MountServer):
        option = "allowed_origins=['https://evil.x'] to immortus_async.asgi.app()"
    assert "'https://evil.x'" in warning and option in warning


async def test_start_refuses_a_redis_it_cannot_reach(caplog: pytest.LogCaptureFixture) -> None:
    """Bridge.start raises RedisUnavailable naming Redis without its password; never 'listening'."""
    caplog.set_level(logging.INFO, logger="immortus_async.bridge")
    url = f"redis://app:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailable) as raised:
        async with serve(url, "127.0.0.1", 0, secret=SECRET, redis_timeout=2):
            pass
    assert "cannot reach Redis at redis://app:***@127.0.0.1:" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert not [r for r in caplog.records if "listening" in r.getMessage()]


async def test_healthz_is_503_while_the_pub_sub_connection_is_down(
    bridge: Bridge, redis: Redis, bystander: ClientConnection
) -> None:
    """PING answers but the pub/sub connection cannot reconnect: 503; 200 once it is back."""
    assert (await http_get(bridge, "/healthz"))[0] == 200
    clients = len(await redis.client_list())
    limit = (await redis.config_get("maxclients"))["maxclients"]
    # Once the pub/sub connection is cut, no new connection is accepted: it cannot
    # come back, while the bridge's pooled connection still answers PING.
    await redis.config_set("maxclients", clients - 1)
    try:
        await redis.client_kill_filter(_type="pubsub")
        _, _, body = await wait_until(lambda: _unhealthy(bridge), message="/healthz to answer 503")
        assert json.loads(body).items() >= {"status": "unavailable", "redis": "up"}.items()
    finally:
        await redis.config_set("maxclients", limit)
    await wait_until(lambda: _healthy(bridge), message="/healthz to answer 200 again")


async def _unhealthy(bridge: Bridge) -> tuple[int, dict[str, str], bytes] | None:
    answer = await http_get(bridge, "/healthz")
    return answer if answer[0] == 503 else None


async def _healthy(bridge: Bridge) -> bool:
    return (await http_get(bridge, "/healthz"))[0] == 200


async def test_queue_redis_reaches_the_tracker(redis_server: RedisServer) -> None:
    """serve(queue_redis=...) is accepted and handed to the bridge's Tracker, which starts."""
    async with serve(
        redis_server.url, "127.0.0.1", 0, secret=SECRET, queue_redis=redis_server.url
    ) as bridge:
        assert (await http_get(bridge, "/healthz"))[0] == 200
