"""A user's code type-checks: ``mypy --strict`` on the README's snippets and on the
examples, as a user runs it (in a folder of its own, no configuration of ours), each
where its queue is installed; and the type checker sees each queue's own job type
come back from ``Tracker.enqueue``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from immortus_async.adapters import installed

from .conftest import NOT_INSTALLED
from .readme import FILES, ROOT, SNIPPETS

EXAMPLES = ROOT / "examples"


def _readme(queue: str) -> Callable[[Path], None]:
    """Writes ``queue``'s quick start into a folder; arq's with the other snippets."""

    def write(folder: Path) -> None:
        for name, code in FILES[queue].items():
            (folder / name).write_text(code)
        if queue == "arq":  # they import arq's tracked
            for number, code in enumerate(SNIPPETS):
                (folder / f"snippet{number}.py").write_text(code)

    return write


def _example(name: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        for path in (EXAMPLES / name).glob("*.py"):
            shutil.copy2(path, folder / path.name)

    return write


# Each one's files, and the queue it needs installed.
CODE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "readme-arq": ("arq", _readme("arq")),
    "readme-taskiq": ("taskiq", _readme("taskiq")),
    "readme-streaq": ("streaq", _readme("streaq")),
    "arq_basic": ("arq", _example("arq_basic")),
    "custom_strategy": ("arq", _example("custom_strategy")),
    "fastapi_app": ("arq", _example("fastapi_app")),
    "taskiq_basic": ("taskiq", _example("taskiq_basic")),
    "streaq_basic": ("streaq", _example("streaq_basic")),
}

# What mypy reveals of Tracker.enqueue's result, for a file beside the quick start's.
PROBES = {
    "arq": (
        "from arq import create_pool\n"
        "async def probe() -> None:\n"
        "    pool = await create_pool()\n"
        "    reveal_type(await Tracker(pool).enqueue(pool, 'import_csv', 1, _job_id='a'))\n"
        "    reveal_type(job_context({}))\n",
        ["arq.jobs.Job | None", "immortus_async.jobside.JobContext"],
    ),
    "taskiq": (
        "from tasks import broker, import_csv\n"
        "async def probe(tracker: Tracker) -> None:\n"
        "    reveal_type(await tracker.enqueue(broker, import_csv, 1))\n"
        "    reveal_type(await tracker.enqueue(broker, import_csv.kicker(), 1))\n"
        "    reveal_type(await tracker.enqueue(broker, 'import_csv', 1))\n",
        [
            "taskiq.task.AsyncTaskiqTask[int]",
            "taskiq.task.AsyncTaskiqTask[int]",
            "taskiq.task.AsyncTaskiqTask[Any]",
        ],
    ),
    "streaq": (
        "from tasks import import_csv, worker\n"
        "async def probe(tracker: Tracker) -> None:\n"
        "    reveal_type(await tracker.enqueue(worker, import_csv, 1))\n"
        "    reveal_type(await tracker.enqueue(worker, import_csv.enqueue(1)))\n"
        "    reveal_type(await tracker.enqueue(worker, 'import_csv', 1))\n",
        [
            "streaq.task.Task[[rows: int], int]",
            "streaq.task.Task[[rows: int], int]",
            "streaq.task.Task[Any, Any]",
        ],
    ),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the module's runs: the library is analysed once."""
    return tmp_path_factory.mktemp("mypy-cache")


def mypy(folder: Path, cache: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``mypy --strict .`` in ``folder``, as a user would run it there."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), *options, "."],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _needs(queue: str) -> None:
    if not installed(queue):
        pytest.skip(f"{queue}: {NOT_INSTALLED}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(CODE))
def test_the_code_passes_mypy_strict(name: str, tmp_path: Path, cache: Path) -> None:
    """The README's blocks and the examples, as written: no error under --strict."""
    queue, write = CODE[name]
    _needs(queue)
    write(tmp_path)
    checked = mypy(tmp_path, cache)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize("queue", sorted(PROBES))
def test_enqueue_returns_the_queue_s_own_job_type(queue: str, tmp_path: Path, cache: Path) -> None:
    """Beside the quick start, mypy sees arq's ``Job | None``, taskiq's
    ``AsyncTaskiqTask[...]`` and streaQ's ``Task[...]``, not ``Any``; arq's
    ``job_context(ctx)`` is a ``JobContext``."""
    _needs(queue)
    _readme(queue)(tmp_path)
    code, expected = PROBES[queue]
    header = "from immortus_async import Tracker, job_context\n"
    (tmp_path / "probe.py").write_text(header + code)
    checked = mypy(tmp_path, cache)
    revealed = [
        line.partition('Revealed type is "')[2].rstrip('"')
        for line in checked.stdout.splitlines()
        if "Revealed type is" in line
    ]
    assert revealed == expected, checked.stdout
