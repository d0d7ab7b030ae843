"""A FastAPI app whose page starts a job and follows it live: ``uvicorn app:app``.

Routes:
    ``GET /``: the page (``Immortus.create`` then ``Immortus.verify``).
    ``POST /reports``: enqueue a report; answers ``{job_id, token}``.
    ``GET /reports/{job_id}/verify?token=...``: the custom verify, the job's state
    plus fields only this app knows.
    ``GET /reports/{job_id}/download?token=...``: the finished report.

Environment: ``REDIS_URL`` (default ``redis://localhost:6379``),
``IMMORTUS_SECRET`` (the bridge's signing secret), ``BRIDGE_URL`` (where browsers
reach the bridge, default ``http://127.0.0.1:8765``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, PlainTextResponse
from pydantic import BaseModel, Field

from immortus_async import JobStatus, TokenError, Tracker, verify_token

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
BRIDGE_URL = os.environ.get("BRIDGE_URL", "http://127.0.0.1:8765")
PAGE = (Path(__file__).parent / "index.html").read_text().replace("{{BRIDGE_URL}}", BRIDGE_URL)


class ReportRequest(BaseModel):
    """What the page posts."""

    pages: int = Field(default=12, ge=1, le=100)


class Services:
    """What the routes share, opened and closed with the app."""

    pool: ArqRedis
    tracker: Tracker


services = Services()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services.pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    # The secret comes from $IMMORTUS_SECRET: the bridge checks the tokens minted here.
    async with Tracker(services.pool) as services.tracker:
        yield
    await services.pool.aclose()


app = FastAPI(lifespan=lifespan)


def check_token(job_id: str, token: str) -> None:
    """The app's own routes accept the bridge's tokens too."""
    try:
        verify_token(token, os.environ["IMMORTUS_SECRET"], job_id)
    except TokenError as exc:
        raise HTTPException(status_code=403, detail=str(exc)) from None


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    """The page, pointed at the bridge."""
    return PAGE


@app.post("/reports")
async def create_report(request: ReportRequest) -> dict[str, str]:
    """Enqueue a report (its state reads queued at once) and hand out a token for it."""
    job = await services.tracker.enqueue(services.pool, "build_report", request.pages)
    assert job is not None  # arq's Job; None only for a duplicate _job_id
    return {"job_id": job.job_id, "token": services.tracker.token(job.job_id)}


@app.get("/reports/{job_id}/verify")
async def verify_report(job_id: str, token: str) -> dict[str, Any]:
    """Immortus's custom verify: what the bridge's ``/verify`` answers, plus this app's
    fields. Here, how many pages are left and where to download the report."""
    check_token(job_id, token)
    state = await services.tracker.status(job_id)
    meta = state.meta
    done = state.status is JobStatus.FINISHED
    return {
        **state.to_dict(),
        "pages_left": meta.get("pages", 0) - meta.get("pages_done", 0),
        "download_url": f"/reports/{job_id}/download?token={token}" if done else None,
    }


@app.get("/reports/{job_id}/download", response_class=PlainTextResponse)
async def download_report(job_id: str, token: str) -> str:
    """The report: the job's result, as arq keeps it."""
    check_token(job_id, token)
    info = await Job(job_id, services.pool).result_info()
    if info is None or not info.success:
        raise HTTPException(status_code=404, detail="no finished report with this id")
    return str(info.result)
