"""Which strategy tracks a job: inline, else global, else inferred from the queue.

The order is Immortus's: a strategy given on the job itself
(``@tracked(strategy=...)``) wins over the one set with :func:`configure`, which
wins over the one inferred from the queue adapter.

=============  ====================
queue adapter  inferred strategy
=============  ====================
``"arq"``      ``"redis_pub_sub"``
``"memory"``   ``"memory"``
=============  ====================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .registry import StrategySpec, resolve_strategy

__all__ = ["INFERRED_STRATEGIES", "configure", "strategy_for"]

INFERRED_STRATEGIES: dict[str, str] = {"arq": "redis_pub_sub", "memory": "memory"}
"""The strategy inferred from each queue adapter."""

_UNSET: Any = object()
_global_strategy: StrategySpec | None = None
_queue_adapter = "arq"
# Function name (as the queue knows it) -> its inline strategy, filled by @tracked,
# so that a waiter holding only a function name finds the job's strategy.
_inline: dict[str, StrategySpec] = {}


def configure(
    *,
    tracking_strategy: StrategySpec | None = _UNSET,
    queue_adapter: str = _UNSET,
) -> None:
    """Set process-wide defaults. Only the arguments given change.

    Args:
        tracking_strategy: the global strategy (a name, a ``"module:Class"``
            path, a class or an instance), or None to fall back to inference.
            It is resolved now, so a typo fails here rather than at first use.
        queue_adapter: ``"arq"`` (default) or ``"memory"``; decides the inferred
            strategy.

    Raises:
        StrategyNotFound: ``tracking_strategy`` names nothing.
        ValueError: unknown ``queue_adapter``.
    """
    global _global_strategy, _queue_adapter
    if tracking_strategy is not _UNSET:
        if tracking_strategy is not None:
            resolve_strategy(tracking_strategy)
        _global_strategy = tracking_strategy
    if queue_adapter is not _UNSET:
        if queue_adapter not in INFERRED_STRATEGIES:
            raise ValueError(
                f"unknown queue_adapter {queue_adapter!r}; "
                f"choose one of {', '.join(sorted(INFERRED_STRATEGIES))}"
            )
        _queue_adapter = queue_adapter


def set_inline_strategy(function_name: str, spec: StrategySpec) -> None:
    """Record the inline strategy of a job function (what ``@tracked`` does)."""
    resolve_strategy(spec)
    _inline[function_name] = spec


def _inline_for(function: Callable[..., Any] | str | None) -> StrategySpec | None:
    if function is None:
        return None
    if isinstance(function, str):
        return _inline.get(function)
    spec: StrategySpec | None = getattr(function, "__immortus_strategy__", None)
    if spec is not None:
        return spec
    return _inline.get(getattr(function, "__qualname__", ""))


def strategy_for(
    function: Callable[..., Any] | str | None = None,
    *,
    override: StrategySpec | None = None,
) -> StrategySpec:
    """The spec that tracks jobs of ``function``: inline, else global, else inferred.

    ``override`` (a Tracker's own ``tracking_strategy``) stands in for the global
    one. ``function`` is the job function or the name the queue knows it by.
    """
    return (
        _inline_for(function) or override or _global_strategy or INFERRED_STRATEGIES[_queue_adapter]
    )
