"""The public API is exactly what the modules export."""

from __future__ import annotations

import importlib
import pkgutil

import immortus_async
from immortus_async.adapters import ADAPTERS, installed

# The demo runs an arq worker: it needs arq as the arq adapter does.
_NEEDS = {"immortus_async.demo": "arq"} | {entry.module: name for name, entry in ADAPTERS.items()}


def _missing_queue(name: str) -> bool:
    """True for a module that needs a queue this environment lacks."""
    for module, adapter in _NEEDS.items():
        if name == module or name.startswith(module + "."):
            return not installed(adapter)
    return False


def _public_modules() -> list[str]:
    names = []
    # walk_packages imports each package to list what is in it: not the adapters
    # whose queue is missing (they raise ImportError, saying how to install it).
    for info in pkgutil.walk_packages(
        immortus_async.__path__, "immortus_async.", onerror=lambda name: None
    ):
        leaf = info.name.rsplit(".", 1)[-1]
        if not leaf.startswith("_") and "._" not in info.name and not _missing_queue(info.name):
            names.append(info.name)
    return names


def test_every_public_module_has_all() -> None:
    """Every public module declares __all__, and each name in it exists."""
    for name in _public_modules():
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), f"{name} has no __all__"
        for attribute in module.__all__:
            assert hasattr(module, attribute), f"{name}.__all__ lists missing {attribute}"


def test_package_all_is_the_union_of_its_top_level_modules() -> None:
    """immortus_async.__all__ is the union of its direct modules' __all__ lists, and
    the names it keeps of the arq adapter."""
    union: set[str] = set(immortus_async._ADAPTER_NAMES)
    for name in _public_modules():
        if name.count(".") == 1 or name == "immortus_async.strategies":
            union |= set(importlib.import_module(name).__all__)
    # Subpackages with an API of their own (the bridge, the CLI, the adapters) and
    # the ASGI integration (immortus_async.asgi.app), metrics and tracing stay out of the root.
    own_api = {
        "immortus_async.cli",
        "immortus_async.bridge",
        "immortus_async.adapters",
        "immortus_async.asgi",
        "immortus_async.metrics",
        "immortus_async.tracing",
    }
    for name in own_api & set(_public_modules()):
        union -= set(importlib.import_module(name).__all__)
    assert set(immortus_async.__all__) == union


def test_every_public_name_has_a_docstring() -> None:
    """Each public class and function says what it does."""
    for name in immortus_async.__all__:
        if _missing_queue(immortus_async._ADAPTER_NAMES.get(name, "")):
            continue
        obj = getattr(immortus_async, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"
