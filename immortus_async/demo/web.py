"""The demo's web application (Starlette): the page, and the endpoint that enqueues.

``GET /`` is the page; it loads the browser client from the bridge. ``POST
/jobs/<kind>`` enqueues a job of that kind (see :data:`~immortus_async.demo.jobs.JOBS`)
and answers ``{"job_id", "token", "kind"}``: what ``Immortus.create`` resolves to
and ``Immortus.verify`` needs.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from ..tracker import Tracker
from .jobs import JOBS

__all__ = ["create_app"]


def create_app(tracker: Tracker, pool: Any, bridge_url: str) -> Starlette:
    """The demo's app.

    Args:
        tracker: enqueues jobs (writing their ``queued`` state) and mints tokens.
        pool: the ``arq.ArqRedis`` pool jobs are enqueued on.
        bridge_url: the bridge's ``http://host:port``, where the page loads
            ``immortus.js`` from and follows jobs.
    """
    template = resources.files(__package__).joinpath("static", "index.html").read_text("utf-8")
    page = template.replace("{{BRIDGE_URL}}", bridge_url)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def create_job(request: Request) -> JSONResponse:
        kind = request.path_params["kind"]
        function = JOBS.get(kind)
        if function is None:
            return JSONResponse({"error": f"no job kind {kind!r}"}, status_code=404)
        job = await tracker.enqueue(pool, function)
        return JSONResponse(
            {"job_id": job.job_id, "token": tracker.token(job.job_id), "kind": kind},
            status_code=201,
        )

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/jobs/{kind}", create_job, methods=["POST"]),
        ]
    )
