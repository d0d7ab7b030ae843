"""The layout: the core names no queue; each adapter exports what the README says."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from immortus_async import Tracker
from immortus_async.adapters import ADAPTERS, installed, load

from .conftest import NOT_INSTALLED

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "immortus_async"
# What only an adapter (or the demo, which runs arq) may import.
QUEUES = {"arq", "taskiq", "taskiq_redis", "streaq", "coredis"}
NOT_CORE = ("adapters", "demo")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The absolute names of the modules ``path`` imports, anywhere in it."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from . import adapters` imports a module too.
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _core() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in NOT_CORE
    ]


def test_the_core_imports_no_adapter_and_no_queue() -> None:
    """No module outside adapters/ (and the demo) imports a queue or an adapter's module:
    the table in adapters/__init__.py, which imports none, is all the core knows."""
    assert len(_core()) > 20
    adapter_modules = {entry.module for entry in ADAPTERS.values()}
    for path in _core():
        for name in _imports(path):
            top = name.partition(".")[0]
            assert top not in QUEUES, f"{path.relative_to(ROOT)} imports {name}"
            inside = any(name == m or name.startswith(m + ".") for m in adapter_modules)
            assert not inside, f"{path.relative_to(ROOT)} imports the adapter {name}"


def test_the_adapters_table_imports_no_queue() -> None:
    """adapters/__init__.py, which the core imports, imports no queue itself."""
    path = PACKAGE / "adapters" / "__init__.py"
    assert not {name.partition(".")[0] for name in _imports(path)} & QUEUES


def _readme_exports() -> dict[str, list[str]]:
    """``- `module`: `name`, ...`` lines of the README: where each adapter's names are."""
    listed = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.fullmatch(r"- `(immortus_async\.adapters\.\w+)`: (.+)", line)
        if match:
            listed[match[1]] = re.findall(r"`(\w+)`", match[2])
    return listed


def test_the_readme_lists_every_adapter_module() -> None:
    """The README says where the names of every adapter of the table are."""
    assert set(_readme_exports()) == {entry.module for entry in ADAPTERS.values()}


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_each_adapter_exports_what_the_readme_says(adapter: str) -> None:
    """An adapter module's __all__ is the README's list, each name there."""
    if not installed(adapter):
        pytest.skip(f"{adapter}: {NOT_INSTALLED}")
    entry = ADAPTERS[adapter]
    if importlib.util.find_spec(entry.module) is None:
        pytest.fail(f"{entry.module} is in the adapters table but not in the package")
    module = importlib.import_module(entry.module)
    assert sorted(module.__all__) == sorted(_readme_exports()[entry.module])
    assert all(hasattr(module, name) for name in module.__all__)
    assert module.adapter.name == adapter
    assert module.adapter.inferred_strategy == entry.inferred_strategy


@pytest.mark.parametrize("adapter", sorted(name for name, e in ADAPTERS.items() if e.package))
def test_an_adapter_without_its_queue_says_how_to_install_it(adapter: str) -> None:
    """Importing an adapter whose queue this environment lacks (each is missing in one of
    the two CI environments) raises ImportError with the exact install command."""
    if installed(adapter):
        pytest.skip(f"{adapter} is installed in this environment")
    command = f"pip install 'immortus-async[{adapter}]'"
    with pytest.raises(ImportError, match=re.escape(command)):
        load(adapter)
    module = ADAPTERS[adapter].module
    # The adapter's own module, imported directly, says the same (once it is written).
    if importlib.util.find_spec(module) is not None:
        with pytest.raises(ImportError, match=re.escape(command)):
            importlib.import_module(module)


async def test_enqueue_on_something_no_adapter_takes_says_what_to_pass() -> None:
    """Tracker.enqueue on an object of no queue: a TypeError naming what each queue takes."""
    async with Tracker(None) as tracker:
        with pytest.raises(TypeError, match="an arq pool, a taskiq broker or a streaQ worker"):
            await tracker.enqueue(object(), "some_function")
