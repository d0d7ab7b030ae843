from typing import Any


def track_worker(worker: Any, **kw: Any) -> Any:
    raise NotImplementedError


def job_context() -> Any:
    raise NotImplementedError
