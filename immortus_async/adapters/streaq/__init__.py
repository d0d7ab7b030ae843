"""The streaQ adapter: track streaQ tasks, read streaQ's own records.

Needs streaQ: ``pip install 'immortus-async[streaq]'``.
"""

from __future__ import annotations

try:
    import streaq  # noqa: F401
except ImportError as exc:  # pragma: no cover - the environment decides
    raise ImportError(
        "the streaQ adapter needs streaQ: pip install 'immortus-async[streaq]'"
    ) from exc

from .strategy import StreaqStrategy
from .worker import job_context, track_worker

__all__ = ["StreaqStrategy"]
