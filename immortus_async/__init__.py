"""immortus-async: track background jobs and push their status to whoever waits.

>>> async with Tracker("redis://localhost:6379") as tracker:   # doctest: +SKIP
...     state = await tracker.completed(job_id, timeout=60)
"""

from .arq import MAX_META_BYTES, JobContext, track_worker, tracked
from .config import INFERRED_STRATEGIES, configure, strategy_for
from .embedded import RedisServer, find_redis_server
from .exceptions import (
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
from .keys import DEFAULT_PREFIX, Keys
from .registry import ENTRY_POINT_GROUP, StrategySpec, register_strategy, resolve_strategy
from .state import JobState, JobUpdate, apply_update, utcnow
from .status import TERMINAL_STATUSES, JobStatus, is_forward
from .strategies import (
    ArqStrategy,
    MemoryStrategy,
    PushSource,
    RedisPubSubStrategy,
    StateReader,
    StateWriter,
    TrackingStrategy,
)
from .tokens import SECRET_ENV, mint_token, read_secret, verify_token
from .tracker import Tracker

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PREFIX",
    "ENTRY_POINT_GROUP",
    "INFERRED_STRATEGIES",
    "MAX_META_BYTES",
    "SECRET_ENV",
    "TERMINAL_STATUSES",
    "ArqStrategy",
    "ImmortusError",
    "InvalidStateError",
    "JobContext",
    "JobLost",
    "JobNotFound",
    "JobState",
    "JobStatus",
    "JobUpdate",
    "Keys",
    "MemoryStrategy",
    "PushSource",
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
    "configure",
    "find_redis_server",
    "is_forward",
    "mint_token",
    "read_secret",
    "register_strategy",
    "resolve_strategy",
    "strategy_for",
    "track_worker",
    "tracked",
    "utcnow",
    "verify_token",
]
