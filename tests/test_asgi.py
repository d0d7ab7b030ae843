"""immortus_async.asgi without a server: where a request lands under the mount."""

from __future__ import annotations

from typing import Any

import pytest

import immortus_async.asgi
from immortus_async import Tracker
from immortus_async.asgi import route_target


def _scope(path: str, raw: bytes | None, root: str = "", query: bytes = b"") -> dict[str, Any]:
    scope: dict[str, Any] = {"path": path, "root_path": root, "query_string": query}
    if raw is not None:
        scope["raw_path"] = raw
    return scope


@pytest.mark.parametrize(
    ("scope", "target"),
    [
        # Starlette's Mount: the whole path, root_path extended.
        (_scope("/immortus/jobs/7", b"/immortus/jobs/7", "/immortus"), "/jobs/7"),
        # A framework that strips the root from the path.
        (_scope("/jobs/7", b"/immortus/jobs/7", "/immortus"), "/jobs/7"),
        # An encoded slash stays in the job id; the decoded path would split it.
        (_scope("/immortus/jobs/a/b", b"/immortus/jobs/a%2Fb", "/immortus"), "/jobs/a%2Fb"),
        # No raw_path: the decoded path is all there is.
        (_scope("/immortus/jobs/a/b", None, "/immortus"), "/jobs/a/b"),
        # The mount's own root, with and without its slash.
        (_scope("/immortus", b"/immortus", "/immortus"), ""),
        (_scope("/immortus/", b"/immortus/", "/immortus"), "/"),
        # The query travels as sent.
        (_scope("/verify/7", b"/verify/7", query=b"token=t"), "/verify/7?token=t"),
    ],
    ids=["starlette", "stripped", "encoded slash", "no raw_path", "root", "root slash", "query"],
)
def test_route_target_is_the_path_under_the_mount_as_sent(
    scope: dict[str, Any], target: str
) -> None:
    """The target keeps the client's percent-encoding, relative to the mount's root."""
    assert route_target(scope) == target


def test_a_path_too_long_for_any_job_falls_back_to_the_decoded_path() -> None:
    """raw_path is not searched past 4 KiB: no job id is that long, and the search is bounded."""
    long = "/jobs/" + "a/" * 3000
    assert route_target(_scope(long, long.encode())) == long


def test_bad_options_raise_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-positive limit, a string of origins, authorize with insecure_no_auth, or no
    way to authorise at all."""
    monkeypatch.delenv("IMMORTUS_SECRET", raising=False)
    tracker = Tracker()
    with pytest.raises(ValueError, match="max_subscriptions"):
        immortus_async.asgi.app(tracker, insecure_no_auth=True, max_subscriptions=0)
    with pytest.raises(TypeError, match="list of origins"):
        immortus_async.asgi.app(tracker, insecure_no_auth=True, allowed_origins="https://a.x")
    with pytest.raises(ValueError, match="exclude each other"):
        immortus_async.asgi.app(tracker, insecure_no_auth=True, authorize=lambda s, j: True)
    with pytest.raises(ValueError, match="IMMORTUS_SECRET"):
        immortus_async.asgi.app(tracker)
