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


def _type_checking(node: ast.AST) -> bool:
    """True for ``if TYPE_CHECKING:``, whose imports only a type checker makes."""
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (its else runs)."""
    found, pending = [], [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        if _type_checking(node):
            assert isinstance(node, ast.If)
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return found


def _imports(path: Path, *, runtime: bool = True) -> set[str]:
    """The absolute names of the modules ``path`` imports, anywhere in it; with
    ``runtime``, not those only a type checker imports (``if TYPE_CHECKING:``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in _runtime_nodes(tree) if runtime else ast.walk(tree):
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
    """No module outside adapters/ (and the demo) imports a queue or an adapter's module
    at runtime: the table in adapters/__init__.py, which imports none, is all the core
    knows. (A type checker may see more: Tracker.enqueue's overloads name each queue's
    job type under ``if TYPE_CHECKING:``.)"""
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
    assert not {name.partition(".")[0] for name in _imports(path, runtime=False)} & QUEUES


def test_imports_for_the_type_checker_are_not_runtime_imports() -> None:
    """The walk that exempts ``if TYPE_CHECKING:`` still sees what runs: the tracker
    imports the adapters' table at runtime, and the queues' types only for mypy."""
    tracker = PACKAGE / "tracker.py"
    assert "immortus_async.adapters" in _imports(tracker)
    assert "taskiq" not in _imports(tracker) and "taskiq" in _imports(tracker, runtime=False)


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
