"""Who may follow which job: tokens, the app's ``authorize`` and the origin allowlist."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from ..exceptions import TokenExpired, TokenInvalid
from ..tokens import read_secret, verify_owner_token, verify_token
from .protocol import ErrorCode, Rejection

__all__ = ["Authorize", "AuthorizeOwner", "Gatekeeper", "not_found", "owner_not_found"]

Authorize: TypeAlias = Callable[[MutableMapping[str, Any], str], bool | Awaitable[bool]]
"""The app's own check: given the request's ASGI scope and a job id, may the caller
see that job? Sync or async; a false answer refuses."""

AuthorizeOwner: TypeAlias = Callable[[MutableMapping[str, Any], str], bool | Awaitable[bool]]
"""The app's check for owner feeds: given the request's ASGI scope and an owner, may
the caller follow every job of that owner? Sync or async; a false answer refuses."""


def not_found(job_id: str) -> Rejection:
    """The answer to a job the caller may not see: the same as to a job that does not exist.

    Its text names nothing about the job, so that ids cannot be probed.
    """
    return Rejection(ErrorCode.NOT_FOUND, "no such job", job_id)


def owner_not_found(owner: str) -> Rejection:
    """The answer to an owner's feed the caller may not follow, naming nothing about it."""
    return Rejection(ErrorCode.NOT_FOUND, "no such owner", owner=owner)


class Gatekeeper:
    """Checks tokens and origins for both the websocket and the HTTP side.

    Args:
        secret: the HS256 signing secret (at least 32 bytes); defaults to
            ``$IMMORTUS_SECRET``.
        insecure_no_auth: accept every subscription without a token. For
            development only: anyone who can reach the bridge can then follow
            any job whose id they know or guess.
        allowed_origins: browser origins (``"https://app.example"``) allowed
            besides the bridge's own; ``"*"`` allows any. A request without an
            ``Origin`` header (not a browser) is always allowed: the token is what
            protects it.
        authorize: the app's :data:`Authorize` callable, asked about every
            request that carries no token (a token, when given, decides alone).
            With it, the secret is optional (no secret: tokens are refused).
        authorize_owner: the app's :data:`AuthorizeOwner` callable, asked about
            every owner feed requested without a token. Without it, such a
            request is refused (``not_found``) unless auth is off.
        allow_abort: take ``abort`` requests (the websocket message and ``POST
            /jobs/<job_id>/abort``), authorised as a subscription is: a token for
            the job, or the app's ``authorize``. Off by default.

    Raises:
        ValueError: auth is on and there is neither a secret nor ``authorize``,
            the secret is too short, or ``authorize`` comes with ``insecure_no_auth``.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        insecure_no_auth: bool = False,
        allowed_origins: Iterable[str] = (),
        authorize: Authorize | None = None,
        authorize_owner: AuthorizeOwner | None = None,
        allow_abort: bool = False,
    ) -> None:
        self.allow_abort = allow_abort
        self._secret = read_secret(secret)
        apps = authorize is not None or authorize_owner is not None
        if apps and insecure_no_auth:
            raise ValueError(
                "authorize and insecure_no_auth exclude each other: drop insecure_no_auth"
            )
        if self._secret is None and not insecure_no_auth and not apps:
            raise ValueError(
                "the bridge needs a signing secret: set IMMORTUS_SECRET (or pass secret=...), "
                "or run it with insecure_no_auth=True (--insecure-no-auth) for development"
            )
        self._authorize = authorize
        self._authorize_owner = authorize_owner
        self.insecure_no_auth = insecure_no_auth
        origins = {origin.rstrip("/").lower() for origin in allowed_origins}
        self._any_origin = "*" in origins
        self._origins = frozenset(origins - {"*"})

    def authorize(self, job_id: str, token: str | None) -> float | Rejection | None:
        """Check that ``token`` opens ``job_id``.

        Returns:
            The token's expiry as a Unix time, None when no token is needed (or
            the app's ``authorize`` decides: see :meth:`asks_app`), or the
            :class:`Rejection` (``token_required``, ``token_invalid``,
            ``token_expired``) naming the job.
        """
        if self.insecure_no_auth:
            return None
        if not token:
            if self._authorize is not None:
                return None
            return Rejection(ErrorCode.TOKEN_REQUIRED, "a token is required", job_id)
        return self._verify(token, job_id, verify_token, job_id=job_id)

    def authorize_owner(self, owner: str, token: str | None) -> float | Rejection | None:
        """Check that ``token`` opens ``owner``'s feed; as :meth:`authorize` for a job.

        Without a token the app's ``authorize_owner`` decides (:meth:`asks_app`);
        with no such callable either, the answer is :func:`owner_not_found`.
        """
        if self.insecure_no_auth:
            return None
        if not token:
            if self._authorize_owner is not None:
                return None
            if self._authorize is not None:
                # The app decides who sees what, and has said nothing of owners.
                return owner_not_found(owner)
            return Rejection(ErrorCode.TOKEN_REQUIRED, "a token is required", owner=owner)
        return self._verify(token, owner, verify_owner_token, owner=owner)

    def _verify(
        self,
        token: str,
        subject: str,
        verify: Callable[[str, bytes, str], float],
        **names: str,
    ) -> float | Rejection:
        if self._secret is None:
            return Rejection(ErrorCode.TOKEN_INVALID, "this server accepts no tokens", **names)
        try:
            return verify(token, self._secret, subject)
        except TokenExpired as exc:
            return Rejection(ErrorCode.TOKEN_EXPIRED, str(exc), **names)
        except TokenInvalid as exc:
            return Rejection(ErrorCode.TOKEN_INVALID, str(exc), **names)

    def asks_app(self, token: str | None, *, owner: bool = False) -> bool:
        """Whether a request with this token needs the app's :meth:`app_allows` (or,
        for an owner's feed, :meth:`app_allows_owner`) too."""
        app = self._authorize_owner if owner else self._authorize
        return app is not None and not token

    async def app_allows(self, scope: MutableMapping[str, Any] | None, job_id: str) -> bool:
        """The app's ``authorize`` verdict on ``job_id`` (True without one).

        Raises:
            Exception: whatever the callable raises (the caller answers
                ``internal_error``: the app's bug is not the client's refusal).
        """
        return await _ask(self._authorize, scope, job_id)

    async def app_allows_owner(self, scope: MutableMapping[str, Any] | None, owner: str) -> bool:
        """The app's ``authorize_owner`` verdict on ``owner`` (True without one).

        Raises:
            Exception: whatever the callable raises.
        """
        return await _ask(self._authorize_owner, scope, owner)

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a request with this ``Origin`` header, sent to ``host``, is allowed.

        Allowed: no ``Origin`` (not a browser), the bridge's own origin (same host
        and port as the ``Host`` header), an origin in the allowlist, any with
        ``"*"``. ``Origin: null`` (a sandboxed or file page) only with ``"*"``.
        """
        if origin is None or self._any_origin:
            return True
        normalized = origin.rstrip("/").lower()
        if normalized in self._origins:
            return True
        netloc = urlsplit(normalized).netloc
        return bool(netloc) and host is not None and netloc == host.lower()


async def _ask(app: Authorize | None, scope: MutableMapping[str, Any] | None, subject: str) -> bool:
    if app is None:
        return True
    verdict = app(scope if scope is not None else {}, subject)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)
