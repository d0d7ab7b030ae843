"""The documentation site builds with warnings as errors, and documents every public name."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import NOT_INSTALLED

pytest.importorskip("mkdocs", reason=NOT_INSTALLED)

ROOT = Path(__file__).resolve().parent.parent
# Each module whose __all__ the site must document, and the page prefix it has.
DOCUMENTED = ["immortus_async", "immortus_async.bridge", "immortus_async.asgi"]


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
    missing = []
    for module_name in DOCUMENTED + adapters:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # an adapter whose queue this environment lacks: its page still builds
        for name in module.__all__:
            if not any(anchor.endswith("." + name) for anchor in anchors):
                missing.append(f"{module_name}.{name}")
    assert not missing, f"not in the API reference: {missing}"
