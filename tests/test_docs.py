"""The documentation site builds with warnings as errors, and documents every public name."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import NOT_INSTALLED

pytest.importorskip("mkdocs", reason=NOT_INSTALLED)

ROOT = Path(__file__).resolve().parent.parent
# The modules whose __all__ the site must document, besides every adapter's.
DOCUMENTED = [
    "immortus_async",
    "immortus_async.bridge",
    "immortus_async.asgi",
    "immortus_async.metrics",
    "immortus_async.tracing",
]


@pytest.mark.timeout(120)
def test_the_site_builds_strictly_and_names_every_public_name(tmp_path: Path) -> None:
    """``mkdocs build --strict`` succeeds, and every name of every public ``__all__``
    (the package, the bridge, the ASGI mount, each adapter) has its entry."""
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=110,
    )
    assert build.returncode == 0, build.stderr
    anchors = set()
    for page in site.rglob("*.html"):
        anchors |= set(re.findall(r'id="(immortus_async\.[\w.]+)"', page.read_text()))
    adapters = [f"immortus_async.adapters.{name}" for name in ("arq", "taskiq", "streaq")]
    missing = [
        f"{module}.{name}"
        for module in DOCUMENTED + adapters
        for name in _all_of(module)
        if not any(anchor.endswith("." + name) for anchor in anchors)
    ]
    assert not missing, f"not in the API reference: {missing}"


def _all_of(module: str) -> list[str]:
    """A module's ``__all__``, read from its source: an adapter's queue need not be
    installed for its page to be built and checked."""
    path = ROOT.joinpath(*module.split("."))
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            names: list[str] = ast.literal_eval(node.value)
            return names
    raise AssertionError(f"{module} has no __all__")
