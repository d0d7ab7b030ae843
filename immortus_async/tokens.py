"""Signed tokens that let a browser follow one job (JWT, HS256).

Any language can mint one: an HS256 JWT whose claims are ``job_id`` (the job it
opens) and ``exp`` (a Unix time), signed with the bridge's secret. A token for an
owner's feed has ``owner`` instead of ``job_id``; neither kind opens the other.
"""

from __future__ import annotations

import os
import time

import jwt

from .exceptions import TokenExpired, TokenInvalid

__all__ = [
    "SECRET_ENV",
    "mint_owner_token",
    "mint_token",
    "read_secret",
    "verify_owner_token",
    "verify_token",
]

SECRET_ENV = "IMMORTUS_SECRET"
"""The environment variable the bridge and the CLI read the signing secret from."""

_MIN_SECRET_BYTES = 32  # HS256 wants a key at least as long as its 256-bit hash


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not isinstance(key, bytes) or len(key) < _MIN_SECRET_BYTES:
        raise ValueError(
            f"the signing secret must be at least {_MIN_SECRET_BYTES} bytes; "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return key


def read_secret(secret: str | bytes | None = None) -> bytes | None:
    """``secret`` if given, else ``$IMMORTUS_SECRET``, else None; validated for length."""
    if secret is None:
        secret = os.environ.get(SECRET_ENV) or None
    return None if secret is None else _key(secret)


def mint_token(job_id: str, secret: str | bytes, *, ttl: float = 3600) -> str:
    """A token that opens ``job_id`` for ``ttl`` seconds.

    Raises:
        ValueError: the secret is shorter than 32 bytes, or ``ttl`` is not positive.
    """
    return _mint("job_id", job_id, secret, ttl)


def mint_owner_token(owner: str, secret: str | bytes, *, ttl: float = 3600) -> str:
    """A token that opens ``owner``'s feed (every job enqueued with that owner) for
    ``ttl`` seconds.

    Raises:
        ValueError: the secret is shorter than 32 bytes, or ``ttl`` is not positive.
    """
    return _mint("owner", owner, secret, ttl)


def _mint(claim: str, value: str, secret: str | bytes, ttl: float) -> str:
    if ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    claims = {claim: value, "exp": int(time.time() + ttl)}
    return jwt.encode(claims, _key(secret), algorithm="HS256")


def verify_token(token: str, secret: str | bytes, job_id: str) -> float:
    """Check that ``token`` opens ``job_id``; return its expiry (a Unix time).

    Raises:
        TokenExpired: the token's ``exp`` has passed.
        TokenInvalid: malformed, badly signed, missing a claim, or for another job.
    """
    return _verify(token, secret, "job_id", job_id, "job")


def verify_owner_token(token: str, secret: str | bytes, owner: str) -> float:
    """Check that ``token`` opens ``owner``'s feed; return its expiry (a Unix time).

    Raises:
        TokenExpired: the token's ``exp`` has passed.
        TokenInvalid: malformed, badly signed, missing a claim (a job's token has
            no ``owner``), or for another owner.
    """
    return _verify(token, secret, "owner", owner, "owner")


def _verify(token: str, secret: str | bytes, claim: str, value: str, what: str) -> float:
    if not token.isascii():
        # A JWT is base64url and dots; PyJWT would raise UnicodeEncodeError on a
        # lone surrogate (which a JSON frame can carry) instead of refusing it.
        raise TokenInvalid("the token is not valid: a token is ASCII")
    try:
        claims = jwt.decode(
            token,
            _key(secret),
            algorithms=["HS256"],
            options={"require": ["exp", claim]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired("the token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenInvalid(f"the token is not valid: {exc}") from None
    if claims[claim] != value:
        raise TokenInvalid(f"the token is for another {what}")
    return float(claims["exp"])
