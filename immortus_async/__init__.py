"""immortus-async: track background jobs and push their status to whoever waits.

>>> async with Tracker("redis://localhost:6379") as tracker:   # doctest: +SKIP
...     state = await tracker.completed(job_id, timeout=60)

The arq adapter's names (``tracked``, ``track_worker``, ``job_context``, ``ArqStrategy``) are here
too, imported on first use: importing the package needs no queue installed.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .config import INFERRED_STRATEGIES, configure, queue_adapter, strategy_for
from .embedded import RedisServer, find_redis_server
from .exceptions import (
    AbortUnsupported,
    ImmortusError,
    InvalidStateError,
    JobLost,
    JobNotFound,
    RedisUnavailable,
    StrategyNotFound,
    SubscriptionRefused,
    TokenError,
    TokenExpired,
    TokenInvalid,
    TrackerClosed,
)
from .jobside import (
    MAX_META_BYTES,
    MAX_RESULT_BYTES,
    UNOWNED,
    JobContext,
    JobOptions,
    Leftovers,
    begin_job,
)
from .keys import DEFAULT_PREFIX, Keys
from .registry import ENTRY_POINT_GROUP, StrategySpec, register_strategy, resolve_strategy
from .state import JobState, JobUpdate, apply_update, utcnow
from .status import TERMINAL_STATUSES, JobStatus, is_forward
from .strategies import (
    Heartbeats,
    MemoryStrategy,
    PushSource,
    QueueRecords,
    RedisPubSubStrategy,
    StateReader,
    StateWriter,
    TrackingStrategy,
)
from .tokens import (
    SECRET_ENV,
    mint_owner_token,
    mint_token,
    read_secret,
    verify_owner_token,
    verify_token,
)
from .tracker import Tracker

__version__ = "0.1.0"

# The names of an adapter kept here for its users: name -> the adapter's module.
_ADAPTER_NAMES = {
    "ArqStrategy": "immortus_async.adapters.arq",
    "job_context": "immortus_async.adapters.arq",
    "track_worker": "immortus_async.adapters.arq",
    "tracked": "immortus_async.adapters.arq",
}

if TYPE_CHECKING:
    # What __getattr__ gives, as a type checker sees it (else Any: `@tracked` untyped).
    from .adapters.arq import ArqStrategy, job_context, track_worker, tracked


def __getattr__(name: str) -> Any:
    module = _ADAPTER_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'immortus_async' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_PREFIX",
    "ENTRY_POINT_GROUP",
    "INFERRED_STRATEGIES",
    "MAX_META_BYTES",
    "MAX_RESULT_BYTES",
    "SECRET_ENV",
    "TERMINAL_STATUSES",
    "UNOWNED",
    "AbortUnsupported",
    "ArqStrategy",
    "Heartbeats",
    "ImmortusError",
    "InvalidStateError",
    "JobContext",
    "JobLost",
    "JobNotFound",
    "JobOptions",
    "JobState",
    "JobStatus",
    "JobUpdate",
    "Keys",
    "Leftovers",
    "MemoryStrategy",
    "PushSource",
    "QueueRecords",
    "RedisPubSubStrategy",
    "RedisServer",
    "RedisUnavailable",
    "StateReader",
    "StateWriter",
    "StrategyNotFound",
    "StrategySpec",
    "SubscriptionRefused",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "Tracker",
    "TrackerClosed",
    "TrackingStrategy",
    "apply_update",
    "begin_job",
    "configure",
    "find_redis_server",
    "is_forward",
    "job_context",
    "mint_owner_token",
    "mint_token",
    "queue_adapter",
    "read_secret",
    "register_strategy",
    "resolve_strategy",
    "strategy_for",
    "track_worker",
    "tracked",
    "utcnow",
    "verify_owner_token",
    "verify_token",
]
