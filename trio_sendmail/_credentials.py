"""Credentials for SMTP AUTH (RFC 4954): a user name and a password, or an OAuth 2.0 token
provider (RFC 6750, RFC 7628).

Theory of operation
-------------------
An :class:`Authentication` is checked once, when it is built, so that no AUTH exchange
can fail on a field the client could have refused up front: every field must have a
UTF-8 form and no NUL (the PLAIN separator, RFC 4616 §2); with a token provider, the
user name and authzid must not hold U+0001 (the OAuth separator, RFC 7628 §3.1); a
mechanism named by the caller must be one of :data:`MECHANISM_NAMES` and have what it
needs (a password, or a token provider for :data:`OAUTH_MECHANISMS`). The mechanisms
themselves, and the choice among those a server offers, are in ``_sasl.py``.

OAuth tokens come from the caller's async *token provider*. The last one is cached in
the :class:`Authentication` (shared by every session that uses the object) and fetched
again when it expires within :data:`TOKEN_REFRESH_MARGIN` seconds, or after a server
refused it (the mechanism discards it, see :meth:`_TokenCache.discard`).

No repr shows a password, a token or the provider, and no error message quotes them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeAlias

import attrs

from ._errors import SMTPInputError

__all__ = [
    "MECHANISM_NAMES",
    "OAUTH_MECHANISMS",
    "PASSWORD_MECHANISMS",
    "TOKEN_REFRESH_MARGIN",
    "Authentication",
    "OAuth2Token",
    "TokenProvider",
]

TOKEN_REFRESH_MARGIN: Final = 60.0
"""Seconds: a cached OAuth token that expires sooner than this is fetched again."""

MECHANISM_NAMES: Final = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER")
"""The SASL mechanisms implemented (``_sasl.py``), by their IANA names."""

OAUTH_MECHANISMS: Final = frozenset({"OAUTHBEARER", "XOAUTH2"})
"""The mechanisms that need :attr:`Authentication.token_provider`."""

PASSWORD_MECHANISMS: Final = frozenset({"SCRAM-SHA-256", "PLAIN", "LOGIN", "CRAM-MD5"})
"""The mechanisms that need :attr:`Authentication.password`."""

#: RFC 6750 §2.1 ``b64token``: the characters a bearer token may have.
_B64TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: The code points a str can hold but UTF-8 cannot encode (lone surrogates).
_SURROGATE_RE: Final = re.compile(r"[\ud800-\udfff]")


@attrs.frozen
class OAuth2Token:
    """An OAuth 2.0 access token, as a token provider returns it.

    Args:
        access_token: the bearer token (RFC 6750 §2.1 ``b64token`` characters only);
            never shown in reprs.
        expires_at: when it expires, in :func:`time.time` seconds, or ``None`` if
            unknown: such a token is reused until a server refuses it.

    Raises:
        SMTPInputError: *access_token* is empty or has characters a bearer token
            cannot have (the message does not show it).
    """

    access_token: str = attrs.field(repr=False)
    expires_at: float | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.access_token, str):
            raise TypeError("OAuth2Token.access_token must be a str")
        if not _B64TOKEN_RE.fullmatch(self.access_token):
            raise SMTPInputError(
                "OAuth2Token.access_token is not a bearer token (RFC 6750 §2.1 b64token)"
            )
        if self.expires_at is not None and (
            isinstance(self.expires_at, bool) or not isinstance(self.expires_at, int | float)
        ):
            raise TypeError("OAuth2Token.expires_at must be a number or None")

    def expires_within(self, seconds: float, *, now: float | None = None) -> bool:
        """True if the token expires less than *seconds* after *now* (default: the time)."""
        if self.expires_at is None:
            return False
        return self.expires_at - (time.time() if now is None else now) < seconds


def _utf8_encodable(text: str) -> bool:
    """True when *text* has a UTF-8 form (a str fails only on lone surrogates,
    e.g. ``"\\udce9"`` from an undecodable byte read with ``surrogateescape``)."""
    return _SURROGATE_RE.search(text) is None


TokenProvider: TypeAlias = Callable[[], Awaitable[str | OAuth2Token]]
"""An async callable that returns an OAuth 2.0 access token."""


class _TokenCache:
    """The last token of an :class:`Authentication`'s provider (mutable, shared by all
    sessions that use the same credentials)."""

    __slots__ = ("token",)

    def __init__(self) -> None:
        self.token: OAuth2Token | None = None

    def __repr__(self) -> str:
        return "<_TokenCache>"

    def discard(self, token: OAuth2Token | None) -> None:
        """Forget *token*, unless another session has already replaced it."""
        if token is not None and self.token is token:
            self.token = None


@attrs.frozen
class Authentication:
    """Credentials for SMTP AUTH.

    Args:
        username: the authentication identity.
        password: the secret; never shown in reprs, logs or errors. Leave it empty
            for OAuth (with *token_provider*).
        mechanism: a SASL mechanism name (``"PLAIN"``, ``"LOGIN"``, ``"CRAM-MD5"``,
            ``"SCRAM-SHA-256"``, ``"XOAUTH2"``, ``"OAUTHBEARER"``), or ``None`` to
            pick the strongest one the server offers among those the credentials
            allow (see :data:`MECHANISM_PREFERENCE`).
        authzid: an optional authorization identity (PLAIN, SCRAM-SHA-256 and
            OAUTHBEARER send it; LOGIN, CRAM-MD5 and XOAUTH2 cannot).
        token_provider: an async callable returning an OAuth 2.0 access token
            (a ``str``, or an :class:`OAuth2Token` with its expiry). It is called
            before AUTH when no token is cached or the cached one expires within
            :data:`TOKEN_REFRESH_MARGIN` seconds, and again after a server refused
            the cached token. It is awaited as a plain coroutine, so it may use any
            async library the caller runs. Never shown in reprs.

    The token cache is shared by every session that uses this object (and not by
    copies made with :func:`attrs.evolve`). Two sessions that start at the same
    moment with an expired token may both call the provider.

    Raises:
        SMTPInputError: a NUL in a field; a field that cannot be encoded as UTF-8
            (a lone surrogate such as ``"\\udce9"``; the message never shows the
            value); an unknown mechanism; an OAuth mechanism without
            *token_provider*; a password mechanism without *password*; no
            credentials at all; U+0001 in *username* or *authzid* with a
            *token_provider* (it separates the OAuth fields).
        TypeError: a field of the wrong type.
    """

    username: str
    password: str = attrs.field(default="", repr=False)
    mechanism: str | None = attrs.field(default=None, kw_only=True)
    authzid: str = attrs.field(default="", kw_only=True)
    token_provider: TokenProvider | None = attrs.field(default=None, kw_only=True, repr=False)
    _token_cache: _TokenCache = attrs.field(init=False, factory=_TokenCache, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        for name, value in (
            ("username", self.username),
            ("password", self.password),
            ("authzid", self.authzid),
        ):
            if not isinstance(value, str):
                raise TypeError(f"Authentication.{name} must be a str")
            if "\x00" in value:
                raise SMTPInputError(f"Authentication.{name} must not contain NUL")
            if not _utf8_encodable(value):
                # Checked here, not by encoding: a codec's error quotes the value
                # (its repr holds the whole string). The message names the field only.
                raise SMTPInputError(
                    f"Authentication.{name} cannot be encoded as UTF-8: it holds a lone "
                    "surrogate (often a byte that was not valid text where it was read, "
                    "such as a Latin-1 byte in an environment variable)"
                )
        provider = self.token_provider
        if provider is not None:
            if not callable(provider):
                raise TypeError("Authentication.token_provider must be an async callable")
            for name, value in (("username", self.username), ("authzid", self.authzid)):
                if "\x01" in value:
                    raise SMTPInputError(f"Authentication.{name} must not contain U+0001")
        if self.mechanism is not None:
            if not isinstance(self.mechanism, str):
                raise TypeError("Authentication.mechanism must be a str or None")
            object.__setattr__(self, "mechanism", self.mechanism.upper())
            if self.mechanism not in MECHANISM_NAMES:
                raise SMTPInputError(
                    f"unsupported SASL mechanism {self.mechanism!r}; "
                    f"choose one of {', '.join(MECHANISM_NAMES)}"
                )
            if self.mechanism in OAUTH_MECHANISMS and provider is None:
                raise SMTPInputError(f"SASL {self.mechanism} needs a token_provider")
            if self.mechanism in PASSWORD_MECHANISMS and not self.password:
                raise SMTPInputError(f"SASL {self.mechanism} needs a password")
        elif not self.password and provider is None:
            raise SMTPInputError("Authentication needs a password or a token_provider")


async def _fetch_token(auth: Authentication) -> OAuth2Token:
    """The cached token of *auth*, or a fresh one from its provider."""
    cache = auth._token_cache
    token = cache.token
    if token is not None and not token.expires_within(TOKEN_REFRESH_MARGIN):
        return token
    if auth.token_provider is None:
        raise SMTPInputError("OAuth authentication needs a token_provider")
    result = await auth.token_provider()
    if isinstance(result, str):
        result = OAuth2Token(result)
    elif not isinstance(result, OAuth2Token):
        raise TypeError("the token provider must return a str or an OAuth2Token")
    cache.token = result
    return result
