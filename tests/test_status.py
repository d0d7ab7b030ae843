"""The forward-only transition rule, without I/O."""

from __future__ import annotations

import pytest

from immortus_async import TERMINAL_STATUSES, JobStatus, is_forward

S = JobStatus

# (current, current attempt, new, new attempt, accepted)
TRANSITIONS = [
    (S.UNKNOWN, 0, S.QUEUED, 0, True),
    (S.UNKNOWN, 0, S.STARTED, 1, True),
    (S.UNKNOWN, 0, S.FINISHED, 1, True),
    (S.QUEUED, 0, S.STARTED, 1, True),
    (S.STARTED, 1, S.QUEUED, 0, False),
    (S.STARTED, 1, S.STARTED, 1, True),  # a progress update
    (S.STARTED, 1, S.FINISHED, 1, True),
    (S.FINISHED, 1, S.STARTED, 1, False),  # the late started
    (S.FINISHED, 1, S.STARTED, 2, False),  # finished is final
    (S.FINISHED, 1, S.FAILED, 1, False),
    (S.FAILED, 1, S.FINISHED, 1, False),
    (S.FAILED, 1, S.STARTED, 2, True),  # arq ran it again
    (S.STARTED, 1, S.RETRYING, 1, True),
    (S.RETRYING, 1, S.STARTED, 2, True),
    (S.RETRYING, 1, S.STARTED, 1, False),
    (S.RETRYING, 1, S.FAILED, 1, True),  # max tries reached after a retry
    (S.STARTED, 2, S.FINISHED, 1, False),  # an older attempt's end
    (S.STARTED, 2, S.QUEUED, 3, False),
    (S.ABORTED, 1, S.STARTED, 2, False),
    (S.STARTED, 1, S.EXPIRED, 1, False),  # expired is read, never written
    (S.EXPIRED, 1, S.STARTED, 2, False),
]


@pytest.mark.parametrize(("current", "ca", "new", "na", "accepted"), TRANSITIONS)
def test_transition_table(
    current: JobStatus, ca: int, new: JobStatus, na: int, accepted: bool
) -> None:
    """Each row of the table is accepted or dropped as documented."""
    assert is_forward(current, ca, new, na) is accepted


def test_terminal_statuses() -> None:
    """finished, failed, aborted and expired are terminal; the rest are not."""
    assert {s for s in JobStatus if s.terminal} == TERMINAL_STATUSES
    assert {s.value for s in TERMINAL_STATUSES} == {"finished", "failed", "aborted", "expired"}


def test_status_is_a_string() -> None:
    """A status compares and formats as its plain value."""
    assert JobStatus.FINISHED == "finished"
    assert f"{JobStatus.FAILED}" == "failed"
