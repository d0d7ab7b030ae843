"""Immortus's custom tracking strategy, in Python: a table of ``job_id``/``status`` rows.

A tracking strategy is any object with an async ``completed(job_id)``; every other
method is optional, and called only where the object has it (Immortus asked
``respond_to?``). This one keeps one row per job in SQLite, as the Ruby example
kept one in an ActiveRecord table. sqlite3 blocks, so each query runs in a worker
thread (``anyio.to_thread``) and the event loop goes on meanwhile.

It cannot push: whoever waits on one of its jobs (``tracker.completed``) reads
``completed`` and ``meta`` again and again, with backoff.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio

_SCHEMA = "CREATE TABLE IF NOT EXISTS tracked_jobs (job_id TEXT PRIMARY KEY, status TEXT)"
_UPSERT = (
    "INSERT INTO tracked_jobs (job_id, status) VALUES (?, ?) "
    "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status"
)


class SqliteTrackingStrategy:
    """Tracks jobs in a SQLite table; the status names are immortus-async's.

    Args:
        path: the database file, shared by the worker and whoever waits.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # Callbacks, called by the job side (tracker.enqueue, @tracked).

    async def job_enqueued(self, job_id: str) -> None:
        """The job is in the queue."""
        await self._save(job_id, "queued")

    async def job_started(self, job_id: str) -> None:
        """A worker started it."""
        await self._save(job_id, "started")

    async def job_finished(self, job_id: str) -> None:
        """It succeeded."""
        await self._save(job_id, "finished")

    async def job_failed(self, job_id: str, error: str | None) -> None:
        """It failed: not in the Ruby example, where a failed job never read completed
        and its waiters waited for ever."""
        await self._save(job_id, "failed")

    # What waiters read.

    async def completed(self, job_id: str) -> bool:
        """Mandatory: True once the job has ended, succeeded or not."""
        return await self._status(job_id) in ("finished", "failed")

    async def meta(self, job_id: str) -> dict[str, Any]:
        """Optional: added to every state a waiter gets. A ``status`` that names an
        immortus-async status is taken as the job's; ``unknown`` (no row) lets
        ``tracker.completed`` raise ``JobNotFound`` instead of waiting."""
        return {"status": await self._status(job_id) or "unknown"}

    # The table.

    async def _save(self, job_id: str, status: str) -> None:
        await anyio.to_thread.run_sync(self._query, _UPSERT, (job_id, status))

    async def _status(self, job_id: str) -> str | None:
        sql = "SELECT status FROM tracked_jobs WHERE job_id = ?"
        rows = await anyio.to_thread.run_sync(self._query, sql, (job_id,))
        return str(rows[0][0]) if rows else None

    def _query(self, sql: str, parameters: tuple[str, ...]) -> list[tuple[Any, ...]]:
        # A connection per query: sqlite3 connections belong to the thread that made them.
        with closing(sqlite3.connect(self.path, timeout=10)) as db, db:
            db.execute(_SCHEMA)
            return db.execute(sql, parameters).fetchall()
