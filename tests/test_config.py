"""Strategy resolution: inline > global > inferred; names, classes, instances, paths;
the process-wide retention of records."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

import immortus_async
from immortus_async import (
    JobStatus,
    JobUpdate,
    MemoryStrategy,
    RedisPubSubStrategy,
    StrategyNotFound,
    Tracker,
    configure,
    register_strategy,
    resolve_strategy,
)
from immortus_async import config as config_module
from immortus_async.config import set_inline_strategy

from .strategies_for_tests import OnlyCompleted
from .utils import run_worker

if TYPE_CHECKING:
    from arq.connections import ArqRedis

HOUR, DAY = 3_600_000, 86_400_000  # in ms, as PTTL answers


@pytest.fixture(autouse=True)
def _restore_retention(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test leaves the process-wide retention as it found it."""
    monkeypatch.setattr(config_module, "_retention", config_module._retention)
    yield


async def settle(ctx: dict[str, Any]) -> str:
    """A job for the retention tests, tracked where the test runs it."""
    return "done"


async def ttls(redis: Redis, strategy: RedisPubSubStrategy, job_id: str) -> tuple[int, int]:
    """The PTTL of the job's record and of its tombstone, in ms (-2: no such key)."""
    record = await redis.pttl(strategy.keys.record(job_id))
    tombstone = await redis.pttl(strategy.keys.tombstone(job_id))
    return record, tombstone


def within(ms: int, expected: int) -> bool:
    """PTTL just after the write: set to ``expected``, a moment of it already gone."""
    return expected // 2 < ms <= expected


async def job_function(ctx: dict[str, object]) -> None:
    """A job function for inline lookups."""


@pytest.fixture
async def plain_tracker(redis: Redis):  # type: ignore[no-untyped-def]
    async with Tracker(redis) as tracker:
        yield tracker


async def test_inferred_from_queue_adapter(plain_tracker: Tracker) -> None:
    """With nothing configured, arq infers redis_pub_sub and memory infers memory."""
    assert isinstance(plain_tracker.strategy(), RedisPubSubStrategy)
    configure(queue_adapter="memory")
    assert isinstance(plain_tracker.strategy(), MemoryStrategy)


@pytest.mark.parametrize(
    "spec",
    ["memory", MemoryStrategy, "immortus_async.strategies.memory:MemoryStrategy"],
    ids=["name", "class", "path"],
)
async def test_global_beats_inferred(plain_tracker: Tracker, spec: object) -> None:
    """configure(tracking_strategy=...) by name, class or path wins over inference."""
    configure(tracking_strategy=spec)
    assert isinstance(plain_tracker.strategy(), MemoryStrategy)


async def test_global_instance_is_used_as_is(plain_tracker: Tracker) -> None:
    """An instance given globally is the very object the tracker uses."""
    instance = MemoryStrategy()
    configure(tracking_strategy=instance)
    assert plain_tracker.strategy() is instance


async def test_inline_beats_global(plain_tracker: Tracker) -> None:
    """A job's inline strategy wins over the global one, by function or by name."""
    configure(tracking_strategy="redis_pub_sub")
    set_inline_strategy("job_function", "memory")
    assert isinstance(plain_tracker.strategy(job_function), MemoryStrategy)
    assert isinstance(plain_tracker.strategy("job_function"), MemoryStrategy)
    assert isinstance(plain_tracker.strategy("other_function"), RedisPubSubStrategy)
    assert isinstance(plain_tracker.strategy(), RedisPubSubStrategy)


async def test_tracker_strategy_stands_in_for_global(redis: Redis) -> None:
    """Tracker(tracking_strategy=...) beats the global setting, not the inline one."""
    configure(tracking_strategy="redis_pub_sub")
    set_inline_strategy("job_function", "immortus_async.strategies.memory:MemoryStrategy")
    async with Tracker(redis, tracking_strategy=OnlyCompleted) as tracker:
        assert isinstance(tracker.strategy(), OnlyCompleted)
        assert isinstance(tracker.strategy("job_function"), MemoryStrategy)


async def test_one_instance_per_class_per_tracker(plain_tracker: Tracker) -> None:
    """Built strategies are cached, so a tracker keeps one pub/sub connection."""
    assert plain_tracker.strategy() is plain_tracker.strategy("anything")


def test_registered_name_resolves() -> None:
    """register_strategy makes a class resolvable by name."""
    register_strategy("only_completed", OnlyCompleted)
    assert resolve_strategy("only_completed") is OnlyCompleted


def test_unknown_name_lists_what_was_tried() -> None:
    """An unknown name raises StrategyNotFound naming every place tried."""
    with pytest.raises(StrategyNotFound) as caught:
        resolve_strategy("nope")
    message = str(caught.value)
    assert "'nope'" in message
    assert "registry" in message and "redis_pub_sub" in message
    assert "immortus_async.strategies" in message
    assert "import path" in message


def test_bad_path_lists_the_import_error() -> None:
    """A 'module:Class' path that does not import says why."""
    with pytest.raises(StrategyNotFound, match="no_such_module"):
        resolve_strategy("no_such_module:Thing")
    with pytest.raises(StrategyNotFound, match="NoSuchClass"):
        resolve_strategy("immortus_async:NoSuchClass")


def test_configure_fails_early() -> None:
    """configure() resolves at once: a typo fails there, with a clear message."""
    with pytest.raises(StrategyNotFound):
        configure(tracking_strategy="redis_pubsub")
    with pytest.raises(ValueError, match="queue_adapter"):
        configure(queue_adapter="celery")
    with pytest.raises(TypeError, match="completed"):
        configure(tracking_strategy=object())


def test_entry_point_group_name() -> None:
    """The entry-point group is the documented one."""
    assert immortus_async.ENTRY_POINT_GROUP == "immortus_async.strategies"


async def test_default_retention_is_an_hour_after_the_end(
    plain_tracker: Tracker, redis: Redis
) -> None:
    """Nothing configured: a record lives a day while running, an hour once ended (+ tombstone)."""
    strategy = plain_tracker.strategy()
    assert isinstance(strategy, RedisPubSubStrategy)
    await strategy.apply(JobUpdate(job_id="d", status=JobStatus.STARTED))
    record, tombstone = await ttls(redis, strategy, "d")
    assert within(record, DAY) and tombstone == -2
    await strategy.apply(JobUpdate(job_id="d", status=JobStatus.FINISHED))
    record, tombstone = await ttls(redis, strategy, "d")
    assert within(record, HOUR) and within(tombstone, 2 * HOUR)


async def test_configured_retention_holds_on_both_sides(pool: ArqRedis, redis: Redis) -> None:
    """configure()'s retention is what the web process (queued) and a real worker both write."""
    configure(ttl=120, tombstone_ttl=30, active_ttl=600)
    async with Tracker(pool) as tracker:
        strategy = tracker.strategy()
        assert isinstance(strategy, RedisPubSubStrategy)
        job = await tracker.enqueue(pool, "settle")
        assert job is not None
        record, tombstone = await ttls(redis, strategy, job.job_id)
        assert within(record, 600_000) and tombstone == -2
        from immortus_async import tracked

        await run_worker(pool, [tracked(settle)])
        assert (await tracker.status(job.job_id)).status is JobStatus.FINISHED
        record, tombstone = await ttls(redis, strategy, job.job_id)
    assert within(record, 120_000) and within(tombstone, 150_000)


async def test_a_strategy_s_own_retention_wins(redis: Redis) -> None:
    """Arguments given to RedisPubSubStrategy beat configure(); the others come from it."""
    configure(ttl=120, tombstone_ttl=30)
    strategy = RedisPubSubStrategy(redis, ttl=60)
    await strategy.apply(JobUpdate(job_id="o", status=JobStatus.FAILED, error="x"))
    record, tombstone = await ttls(redis, strategy, "o")
    assert within(record, 60_000) and within(tombstone, 90_000)


@pytest.mark.parametrize(
    "retention",
    [{"ttl": 0}, {"active_ttl": -1}, {"tombstone_ttl": -1}, {"ttl": "3600"}, {"ttl": True}],
)
def test_configure_refuses_a_bad_retention(retention: dict[str, Any]) -> None:
    """A retention that is no (positive) number of seconds raises ValueError, changing nothing."""
    before = config_module._retention
    with pytest.raises(ValueError, match=next(iter(retention))):
        configure(tracking_strategy="memory", **retention)
    assert (config_module._retention, config_module._global_strategy) == (before, None)


def test_a_path_is_resolved_once() -> None:
    """A "module:Class" spec is imported (after a scan of the entry points) once: later
    calls, such as the Tracker's on every wait, find it without either."""
    path = "tests.strategies_for_tests:OnlyCompleted"
    first = resolve_strategy(path)
    module = sys.modules.pop("tests.strategies_for_tests")
    try:
        assert resolve_strategy(path) is first
        assert "tests.strategies_for_tests" not in sys.modules
    finally:
        sys.modules["tests.strategies_for_tests"] = module
