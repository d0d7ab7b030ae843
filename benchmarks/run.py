"""Run the benchmarks: push (immortus-async) beside the alternatives, in one run.

    python benchmarks/run.py            # everything, full sizes (several minutes)
    python benchmarks/run.py --quick    # smaller sizes, under two minutes on 2 cores
    python benchmarks/run.py --smoke    # tiny sizes: checks that the scripts still run
    python benchmarks/run.py --only fanout,selectivity

Each benchmark gets a private Redis server of its own (``immortus_async.RedisServer``:
``redis-server`` on PATH, else the bundled Valkey) and prints its tables as Markdown.
``--profile DIR`` records py-spy profiles of the processes that benchmarks profile.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import platform
import sys
import time
import traceback
from pathlib import Path

import psutil
from _common import SIZES, Context, Table, raise_open_files_limit
from redis.asyncio import Redis

from immortus_async import RedisServer

BENCHMARKS = [
    "wake_latency",
    "browser_path",
    "fanout",
    "overhead",
    "redis_cost",
    "selectivity",
    "peers",
]


async def _redis_version(url: str) -> str:
    client = Redis.from_url(url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    name = "valkey" if "valkey_version" in info else "redis"
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


def _machine(redis_version: str) -> str:
    return (
        f"{psutil.cpu_count(logical=True)} cores ({platform.processor() or platform.machine()}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"{redis_version}, {platform.system()} {platform.release()}"
    )


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes (< 2 min)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--profile", type=Path, help="write py-spy profiles to this folder")
    parser.add_argument(
        "--set",
        default="",
        metavar="NAME=VALUE,...",
        help="override sizes, e.g. --set fanout_own=1000,fanout_shared=2000",
    )
    args = parser.parse_args(argv)
    sizes = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    overrides = dict(item.split("=", 1) for item in args.set.split(",") if item)
    fields = {name: type(getattr(sizes, name)) for name in overrides if hasattr(sizes, name)}
    if len(fields) != len(overrides):
        parser.error(f"--set: unknown size(s) {sorted(set(overrides) - set(fields))}")
    sizes = dataclasses.replace(sizes, **{k: fields[k](v) for k, v in overrides.items()})
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or BENCHMARKS
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; pick from {BENCHMARKS}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    raise_open_files_limit()

    started = time.monotonic()
    failed: list[str] = []
    printed_machine = False
    for name in chosen:
        module = importlib.import_module(name)
        with RedisServer() as server:
            if not printed_machine:
                print(f"# immortus-async benchmarks ({sizes.mode})\n")
                print(f"Machine: {_machine(await _redis_version(server.url))}\n", flush=True)
                printed_machine = True
            context = Context(
                sizes=sizes, redis_url=server.url, redis_pid=server.pid, profile_dir=args.profile
            )
            began = time.monotonic()
            try:
                tables: list[Table] = await module.run(context)
            except Exception:
                failed.append(name)
                print(f"### {module.TITLE}\n\nFAILED:\n```\n{traceback.format_exc()}```\n")
                continue
        for table in tables:
            print(table.render() + "\n", flush=True)
        print(f"({name}: {time.monotonic() - began:.1f} s)\n", flush=True)
    print(f"Total: {time.monotonic() - started:.1f} s")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
