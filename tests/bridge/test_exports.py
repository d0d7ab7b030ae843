"""The bridge's public API is what its __init__ lists: the union of its modules' lists."""

from __future__ import annotations

import importlib

import immortus_async.bridge as bridge

MODULES = ["auth", "http", "logs", "outbox", "protocol", "server", "session"]


def test_package_all_is_the_union_of_module_alls() -> None:
    """Every module's __all__ is exported by the package, and nothing else is."""
    union: set[str] = set()
    for name in MODULES:
        union.update(importlib.import_module(f"immortus_async.bridge.{name}").__all__)
    assert set(bridge.__all__) == union
    assert len(bridge.__all__) == len(union)


def test_every_exported_name_exists() -> None:
    """Each name in __all__ is an attribute of the package."""
    for name in bridge.__all__:
        assert hasattr(bridge, name), name
