"""Tracking strategies by name: the registry, entry points and ``"module:Class"`` paths."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from . import adapters
from .exceptions import StrategyNotFound

__all__ = ["ENTRY_POINT_GROUP", "StrategySpec", "register_strategy", "resolve_strategy"]

ENTRY_POINT_GROUP = "immortus_async.strategies"

StrategySpec = str | type | object
"""What names a strategy: a name, a ``"package.module:Class"`` path, a class, or an instance."""

# Built-ins are imported on first use, so importing the package stays cheap; each
# queue adapter's reader of its own records is one (an ImportError with the install
# command when its queue is missing).
_registry: dict[str, type | str] = {
    "redis_pub_sub": "immortus_async.strategies.redis_pub_sub:RedisPubSubStrategy",
    "memory": "immortus_async.strategies.memory:MemoryStrategy",
    **{
        entry.strategy[0]: entry.strategy[1]
        for entry in adapters.ADAPTERS.values()
        if entry.strategy
    },
}


# What entry points and import paths resolved to: scanning the entry points costs
# milliseconds, and a spec is resolved on every call of the Tracker.
_found: dict[str, type | object] = {}


def register_strategy(name: str, cls: type) -> None:
    """Make ``cls`` resolvable as ``name`` (replacing any class of that name).

    Raises:
        TypeError: ``cls`` is not a class, or has no ``completed`` method.
        ValueError: ``name`` is empty.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a strategy name must be a non-empty string")
    if not isinstance(cls, type):
        raise TypeError(f"register_strategy takes a class, got {type(cls).__name__}")
    if not callable(getattr(cls, "completed", None)):
        raise TypeError(f"{cls.__qualname__} has no completed(job_id) method")
    _registry[name] = cls


def _import_path(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def resolve_strategy(spec: StrategySpec) -> type | object:
    """Turn a spec into a strategy class or instance.

    A class or an instance is returned as is. A string is looked up, in order, in
    the registry (:func:`register_strategy`; the built-ins ``redis_pub_sub`` and
    ``memory``; each queue adapter's: ``arq``, ``taskiq``, ``streaq``), in the
    ``immortus_async.strategies`` entry-point group, and finally, if it contains
    ``:``, imported as ``"package.module:Class"``.

    Raises:
        StrategyNotFound: nothing matched; the message lists every place tried.
        TypeError: the spec is neither a string, a class nor an object with a
            ``completed`` method.
    """
    if isinstance(spec, str):
        return _resolve_name(spec)
    if not callable(getattr(spec, "completed", None)):
        raise TypeError(f"a tracking strategy needs a completed(job_id) method; {spec!r} has none")
    return spec


def _resolve_name(name: str) -> type | object:
    tried = []
    found = _registry.get(name)
    if found is not None:
        if isinstance(found, str):
            found = _registry[name] = _import_path(found)
        return found
    if name in _found:
        return _found[name]
    tried.append(f"the registry ({', '.join(sorted(_registry))})")
    matches = entry_points(group=ENTRY_POINT_GROUP, name=name)
    for entry_point in matches:
        resolved = _found[name] = resolve_strategy(entry_point.load())
        return resolved
    tried.append(f"the entry-point group {ENTRY_POINT_GROUP!r}")
    if ":" in name:
        try:
            resolved = _found[name] = resolve_strategy(_import_path(name))
            return resolved
        except (ImportError, AttributeError) as exc:
            tried.append(f"the import path {name!r} ({exc})")
    else:
        tried.append("an import path (a 'package.module:Class' string; this has no ':')")
    raise StrategyNotFound(f"no tracking strategy {name!r}; tried " + ", ".join(tried))
