"""Tracking strategies: how a job's status is recorded and read."""

from .arq import ArqStrategy
from .base import PushSource, StateReader, StateWriter, TrackingStrategy
from .memory import MemoryStrategy
from .redis_pub_sub import RedisPubSubStrategy

__all__ = [
    "ArqStrategy",
    "MemoryStrategy",
    "PushSource",
    "RedisPubSubStrategy",
    "StateReader",
    "StateWriter",
    "TrackingStrategy",
]
