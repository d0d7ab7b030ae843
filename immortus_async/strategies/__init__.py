"""Tracking strategies: how a job's status is recorded and read.

The strategies that read one queue's own records live with that queue's adapter
(``immortus_async.adapters.arq``'s ``ArqStrategy``).
"""

from .base import (
    Heartbeats,
    PushSource,
    QueueRecords,
    StateReader,
    StateWriter,
    TrackingStrategy,
)
from .memory import MemoryStrategy
from .redis_pub_sub import RedisPubSubStrategy

__all__ = [
    "Heartbeats",
    "MemoryStrategy",
    "PushSource",
    "QueueRecords",
    "RedisPubSubStrategy",
    "StateReader",
    "StateWriter",
    "TrackingStrategy",
]
