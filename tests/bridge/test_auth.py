"""Tokens and origins without I/O."""

from __future__ import annotations

import pytest

from immortus_async.bridge import ErrorCode, Gatekeeper, Rejection

from .helpers import OTHER_SECRET, SECRET, expired_token, token


def test_a_valid_token_returns_its_expiry() -> None:
    """A token for the job, signed with the secret, grants until its exp."""
    gate = Gatekeeper(secret=SECRET)
    expires_at = gate.authorize("7", token("7", ttl=60))
    assert isinstance(expires_at, float)


@pytest.mark.parametrize(
    ("given", "code"),
    [
        (None, ErrorCode.TOKEN_REQUIRED),
        ("", ErrorCode.TOKEN_REQUIRED),
        ("garbage", ErrorCode.TOKEN_INVALID),
        (token("7", secret=OTHER_SECRET), ErrorCode.TOKEN_INVALID),
        (token("8"), ErrorCode.TOKEN_INVALID),
        (expired_token("7"), ErrorCode.TOKEN_EXPIRED),
    ],
    ids=["none", "empty", "garbage", "forged", "another job", "expired"],
)
def test_refused_tokens(given: str | None, code: ErrorCode) -> None:
    """Each refused token is a Rejection naming the job with its code."""
    refused = Gatekeeper(secret=SECRET).authorize("7", given)
    assert isinstance(refused, Rejection)
    assert (refused.code, refused.job_id) == (code, "7")


def test_insecure_mode_needs_no_token_and_no_secret() -> None:
    """insecure_no_auth accepts anything, with no expiry."""
    assert Gatekeeper(insecure_no_auth=True).authorize("7", None) is None


def test_a_secret_is_required_unless_insecure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a secret (nor $IMMORTUS_SECRET) the gate refuses to exist; a short one too."""
    monkeypatch.delenv("IMMORTUS_SECRET", raising=False)
    with pytest.raises(ValueError, match="IMMORTUS_SECRET"):
        Gatekeeper()
    with pytest.raises(ValueError, match="32 bytes"):
        Gatekeeper(secret="short")
    monkeypatch.setenv("IMMORTUS_SECRET", SECRET)
    assert isinstance(Gatekeeper().authorize("7", token("7")), float)


def test_origins() -> None:
    """No Origin, the bridge's own, and listed ones pass; others and "null" do not."""
    gate = Gatekeeper(secret=SECRET, allowed_origins=["https://App.example/"])
    host = "bridge.example:8765"
    assert gate.origin_allowed(None, host)
    assert gate.origin_allowed("https://app.example", host)
    assert gate.origin_allowed("http://bridge.example:8765", host)
    assert not gate.origin_allowed("https://evil.example", host)
    assert not gate.origin_allowed("http://bridge.example:9999", host)
    assert not gate.origin_allowed("null", host)
    assert not gate.origin_allowed("https://evil.example", None)
    anyone = Gatekeeper(secret=SECRET, allowed_origins=["*"])
    assert anyone.origin_allowed("https://evil.example", host) and anyone.origin_allowed(
        "null", host
    )
