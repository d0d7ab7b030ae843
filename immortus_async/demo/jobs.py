"""The demo's three arq jobs, each ``@tracked``: what a newcomer clicks on.

They pretend to work with ``asyncio.sleep``; the tracking calls are the real thing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq import Retry

from ..adapters.arq import tracked

__all__ = ["FUNCTIONS", "JOBS", "flaky_sync", "import_csv", "send_invoice"]

INVOICE_STEPS = ("computing totals", "rendering the PDF", "signing", "e-mailing the customer")
CSV_ROWS = 60
FLAKY_RETRY_AFTER = 1.0  # seconds arq waits before the second attempt


@tracked
async def send_invoice(ctx: dict[str, Any], customer: str = "ACME Ltd") -> str:
    """Build and send an invoice: four steps, about three seconds."""
    for done, step in enumerate(INVOICE_STEPS):
        await ctx["immortus"].update(progress=done / len(INVOICE_STEPS), step=step)
        await asyncio.sleep(0.75)  # the step's work
    await ctx["immortus"].update(progress=1.0, step="sent")
    return f"invoice sent to {customer}"


@tracked
async def import_csv(ctx: dict[str, Any], rows: int = CSV_ROWS) -> int:
    """Import a CSV file row by row, reporting each row: progress and a row count."""
    for row in range(1, rows + 1):
        await asyncio.sleep(0.05)  # the row's work
        await ctx["immortus"].update(progress=row / rows, rows=row, total_rows=rows)
    return rows


@tracked
async def flaky_sync(ctx: dict[str, Any]) -> str:
    """Sync with a partner API that times out on the first attempt.

    The first attempt raises arq's ``Retry`` halfway: the job reads ``retrying``
    (with the reason) until arq runs it again, and the second attempt finishes.
    """
    attempt: int = ctx["job_try"]
    for tenth in range(1, 11):
        if attempt == 1 and tenth == 5:
            await ctx["immortus"].update(partner="timed out, retrying")
            raise Retry(defer=FLAKY_RETRY_AFTER)
        await asyncio.sleep(0.1)  # a page of the sync
        await ctx["immortus"].update(progress=tenth / 10, partner="answering")
    return f"synced on attempt {attempt}"


FUNCTIONS = (send_invoice, import_csv, flaky_sync)
"""What the demo's worker runs."""

JOBS: dict[str, str] = {"invoice": "send_invoice", "csv": "import_csv", "flaky": "flaky_sync"}
"""The page's buttons: a kind of job -> the arq function it enqueues."""
