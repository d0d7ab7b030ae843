"""Tracking strategies: how a job's status is recorded and read."""

from .base import PushSource, StateReader, StateWriter, TrackingStrategy
from .memory import MemoryStrategy
from .redis_pub_sub import RedisPubSubStrategy

__all__ = [
    "MemoryStrategy",
    "PushSource",
    "RedisPubSubStrategy",
    "StateReader",
    "StateWriter",
    "TrackingStrategy",
]
