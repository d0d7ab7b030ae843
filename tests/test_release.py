"""What a user of the published package gets: the wheel and the sdist built from a fresh
copy, the wheel installed in a fresh venv, the quick start run from it, no checkout in sight."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# The quick start runs an arq worker, and the build needs `build`: env 1 only.
pytest.importorskip("arq", reason=NOT_INSTALLED)
pytest.importorskip("build", reason=NOT_INSTALLED)

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import immortus_async
from immortus_async import RedisServer

from .readme import write_files
from .test_readme import fresh_copy
from .utils import SCALE, Spawned

# What the package serves or reads from its own files, besides its modules.
DATA = [
    "immortus_async/py.typed",
    "immortus_async/bridge/static/immortus.js",
    "immortus_async/bridge/static/immortus.mjs",
    "immortus_async/bridge/static/immortus.d.ts",
    "immortus_async/demo/static/index.html",
    "immortus_async/strategies/redis_pub_sub.lua",
]


def _env() -> dict[str, str]:
    """This environment without its venv, its coverage, or any path to the checkout."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH") and not key.startswith("COVERAGE_")
    }


def _run(*command: str | Path, cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout * SCALE,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.timeout(180)
async def test_the_installed_wheel_runs_the_quick_start(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``python -m build`` makes a wheel and an sdist holding the package's data; the
    wheel, installed with ``[arq]`` in a fresh venv, gives ``--version`` and runs the
    README's quick start (an arq worker and the app) from a folder with no checkout."""
    source = fresh_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--outdir", dist, source, cwd=tmp_path)
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    version = immortus_async.__version__
    assert wheel.name == f"immortus_async-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    with tarfile.open(sdist) as archive:
        top = f"immortus_async-{version}/"
        in_sdist = {name.removeprefix(top) for name in archive.getnames()}
    for name in DATA:
        assert name in in_wheel, f"{name} is not in the wheel"
        assert name in in_sdist, f"{name} is not in the sdist"
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"} <= in_sdist

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        f"{wheel}[arq]", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    # Where the user's own files are, the README's arq quick start: no checkout there.
    user = write_files(tmp_path / "user", "arq", redis_server.url)
    assert _run(venv / "bin" / "immortus-async", "--version", cwd=user).strip().endswith(version)
    where = _run(python, "-c", "import immortus_async; print(immortus_async.__file__)", cwd=user)
    assert Path(where.strip()).is_relative_to(venv), where

    env = _env()
    worker_command = [str(venv / "bin" / "arq"), "tasks.WorkerSettings"]
    async with await Spawned.start(*worker_command, cwd=user, env=env) as worker:
        async with await Spawned.start(str(python), "app.py", cwd=user, env=env) as app:
            assert await app.process.wait() == 0, app.output
        await worker.stop()
    assert app.lines[-1] == "finished {'rows': 100}", app.output
    assert "import_csv" in worker.output, worker.output
