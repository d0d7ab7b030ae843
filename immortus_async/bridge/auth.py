"""Who may follow which job: subscription tokens and the origin allowlist. No I/O."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from ..exceptions import TokenExpired, TokenInvalid
from ..tokens import read_secret, verify_token
from .protocol import ErrorCode, Rejection

__all__ = ["Gatekeeper"]


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

    Raises:
        ValueError: auth is on and there is no secret, or it is too short.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        insecure_no_auth: bool = False,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self._secret = read_secret(secret)
        if self._secret is None and not insecure_no_auth:
            raise ValueError(
                "the bridge needs a signing secret: set IMMORTUS_SECRET (or pass secret=...), "
                "or run it with insecure_no_auth=True (--insecure-no-auth) for development"
            )
        self.insecure_no_auth = insecure_no_auth
        origins = {origin.rstrip("/").lower() for origin in allowed_origins}
        self._any_origin = "*" in origins
        self._origins = frozenset(origins - {"*"})

    def authorize(self, job_id: str, token: str | None) -> float | Rejection | None:
        """Check that ``token`` opens ``job_id``.

        Returns:
            The token's expiry as a Unix time, None when no token is needed, or
            the :class:`Rejection` (``token_required``, ``token_invalid``,
            ``token_expired``) naming the job.
        """
        if self.insecure_no_auth:
            return None
        if not token:
            return Rejection(ErrorCode.TOKEN_REQUIRED, "a token is required", job_id)
        assert self._secret is not None
        try:
            return verify_token(token, self._secret, job_id)
        except TokenExpired as exc:
            return Rejection(ErrorCode.TOKEN_EXPIRED, str(exc), job_id)
        except TokenInvalid as exc:
            return Rejection(ErrorCode.TOKEN_INVALID, str(exc), job_id)

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
