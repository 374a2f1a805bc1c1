"""SASL mechanisms as small sans-io step objects (RFC 4422, used by RFC 4954 AUTH).

Theory of operation
-------------------
A mechanism object knows nothing of SMTP. The session first awaits
:meth:`Mechanism.prepare` (the only place a mechanism may wait, e.g. for an OAuth
token), then asks it for an optional *initial response* (sent on the ``AUTH``
line, RFC 4954 §4), then hands it the decoded payload of every ``334`` challenge
and sends back what :meth:`Mechanism.respond` returns. When the server answers
235, the session calls :meth:`Mechanism.verify_success` so that mechanisms with
mutual authentication can check the server's proof; when the server refuses, it
calls :meth:`Mechanism.failed` and reports :attr:`Mechanism.error_details`.

Implemented here:

* ``PLAIN`` (RFC 4616): one initial response, ``authzid NUL authcid NUL passwd``.
* ``LOGIN`` (draft-murchison-sasl-login): the server prompts for the user name,
  then the password. Real servers word the prompts differently (``Username:``,
  ``User Name``, with or without a trailing NUL, in any case), so the prompt is
  matched loosely and, when it is not recognised, the order decides.
* ``CRAM-MD5`` (RFC 2195): ``username SP hex(HMAC-MD5(password, challenge))``.
* ``SCRAM-SHA-256`` (RFC 7677, RFC 5802), without channel binding: the password
  never crosses the wire and the server proves that it knows the password too.
* ``XOAUTH2`` (Google's and Microsoft's form) and ``OAUTHBEARER`` (RFC 7628): an
  OAuth 2.0 bearer token from the caller's async *token provider*, cached and
  refreshed before it expires (see :class:`~trio_sendmail._credentials.Authentication`).

Errors: a server message that the client cannot or will not answer (malformed,
a SCRAM nonce that is not an extension of ours, a SCRAM iteration count below
:data:`SCRAM_MIN_ITERATIONS`, bad base64 inside a SCRAM attribute) raises
:exc:`~trio_sendmail.SMTPProtocolError` from :meth:`Mechanism.respond`: the
exchange is cut short in the middle, so the connection is broken and never
reused. A well-formed refusal (a SCRAM ``e=`` message, an OAuth error challenge,
a wrong or missing SCRAM server signature) ends as
:exc:`~trio_sendmail.SMTPAuthenticationError`: from the server's 5xx reply, or,
when the server says 235 without having proved itself, because
:meth:`Mechanism.verify_success` returns False.

Secrets never leave these objects except in the bytes returned to the session,
which marks those lines as secret for the transcript. No repr shows a password,
a token or a value derived from them.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import hmac
import json
import re
import secrets
from typing import ClassVar, Final

from ._credentials import (
    MECHANISM_NAMES,
    OAUTH_MECHANISMS,
    PASSWORD_MECHANISMS,
    TOKEN_REFRESH_MARGIN,
    Authentication,
    OAuth2Token,
    TokenProvider,
    _fetch_token,
)
from ._errors import SMTPInputError, SMTPProtocolError

__all__ = [
    "MECHANISMS",
    "MECHANISM_PREFERENCE",
    "OAUTH_MECHANISMS",
    "PASSWORD_MECHANISMS",
    "PLAINTEXT_MECHANISM_PREFERENCE",
    "SCRAM_MAX_ITERATIONS",
    "SCRAM_MIN_ITERATIONS",
    "TOKEN_REFRESH_MARGIN",
    "Authentication",
    "CramMD5Mechanism",
    "LoginMechanism",
    "Mechanism",
    "OAuth2Token",
    "OAuthBearerMechanism",
    "PlainMechanism",
    "ScramSha256Mechanism",
    "TokenProvider",
    "XOAuth2Mechanism",
    "choose_mechanism",
    "usable_mechanisms",
]

SCRAM_MIN_ITERATIONS: Final = 4096
"""The lowest SCRAM iteration count accepted (RFC 7677 §4, RFC 5802 §5.1): a lower
one would make the client's proof cheap to attack offline."""

SCRAM_MAX_ITERATIONS: Final = 1_000_000
"""The highest SCRAM iteration count accepted. The key derivation runs in the
caller's thread (about a third of a second at this count); a server must not be
able to stall the client for longer."""

#: RFC 5802 §7 ``printable`` except ``,``: a SCRAM nonce.
_NONCE_RE: Final = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_B64_RE: Final = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_ATTRIBUTE_RE: Final = re.compile(r"([A-Za-z])=(.*)", re.DOTALL)


# --------------------------------------------------------------------------------------------
# The step objects


class Mechanism(abc.ABC):
    """One run of a SASL mechanism on the client side."""

    #: The IANA name of the mechanism, as sent on the AUTH line.
    name: ClassVar[str]
    #: The most challenges a well-behaved server sends for this mechanism.
    max_steps: ClassVar[int] = 2

    #: What the server said about its refusal, when the mechanism carries that
    #: (the JSON of an RFC 7628 §3.2.2 error challenge, a SCRAM ``e=`` value), so
    #: that the session can attach it to the :exc:`SMTPAuthenticationError`.
    error_details: dict[str, object] | None = None

    def __init__(self, auth: Authentication) -> None:
        self._auth = auth

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self._auth.username!r}>"

    async def prepare(self) -> None:  # noqa: B027 - an optional hook
        """Do any waiting the mechanism needs before it starts (e.g. fetch an
        OAuth token). Called by the session just before ``AUTH`` is sent."""

    def initial_response(self) -> bytes | None:
        """The response to send with the AUTH command, or ``None`` to wait for 334."""
        return None

    @abc.abstractmethod
    def respond(self, challenge: bytes) -> bytes:
        """The response to one decoded 334 challenge.

        Raises:
            SMTPProtocolError: the challenge cannot be answered.
        """

    def verify_success(self, text: bytes | None) -> bool:
        """Check the server's final data on 235; False fails the authentication.

        *text* is the decoded additional data of the success, if the server sent
        any outside a 334 challenge."""
        return True

    def failed(self) -> None:  # noqa: B027 - an optional hook
        """The server refused the authentication (4xx or 5xx). Called by the
        session; OAuth mechanisms forget the token so that the next attempt
        fetches a fresh one."""


class PlainMechanism(Mechanism):
    """SASL PLAIN (RFC 4616), sent as an initial response."""

    name = "PLAIN"
    max_steps = 1

    def _message(self) -> bytes:
        a = self._auth
        return b"\0".join(s.encode("utf-8") for s in (a.authzid, a.username, a.password))

    def initial_response(self) -> bytes:
        return self._message()

    def respond(self, challenge: bytes) -> bytes:
        # RFC 4954 §4: a server that wants no initial response sends an empty 334.
        return self._message()


def _prompt(challenge: bytes) -> str:
    text = challenge.decode("utf-8", "replace").rstrip("\0").strip().rstrip(":").strip()
    return text.lower().replace(" ", "").replace("_", "").replace("-", "")


class LoginMechanism(Mechanism):
    """SASL LOGIN: user name then password, each after its own prompt."""

    name = "LOGIN"

    def __init__(self, auth: Authentication) -> None:
        super().__init__(auth)
        self._steps = 0

    def respond(self, challenge: bytes) -> bytes:
        self._steps += 1
        prompt = _prompt(challenge)
        if "password" in prompt or "passwd" in prompt:
            return self._auth.password.encode("utf-8")
        if "user" in prompt or "login" in prompt:
            return self._auth.username.encode("utf-8")
        # An unknown prompt: the order of the mechanism decides.
        secret = self._auth.username if self._steps == 1 else self._auth.password
        return secret.encode("utf-8")


class CramMD5Mechanism(Mechanism):
    """SASL CRAM-MD5 (RFC 2195): the answer to the server's challenge is
    ``username SP hex(HMAC-MD5(password, challenge))``.

    The password does not cross the wire, but the server must store it in
    plaintext (or an equivalent), and an eavesdropper can attack the answer
    offline; the server does not prove anything. See :data:`MECHANISM_PREFERENCE`.
    """

    name = "CRAM-MD5"
    max_steps = 1

    def respond(self, challenge: bytes) -> bytes:
        if not challenge:
            raise SMTPProtocolError("the server sent an empty CRAM-MD5 challenge")
        key = self._auth.password.encode("utf-8")
        digest = hmac.digest(key, challenge, "md5").hex()
        return f"{self._auth.username} {digest}".encode()


# --- OAuth 2.0 -------------------------------------------------------------------------------


def _error_details(challenge: bytes) -> dict[str, object]:
    """The JSON object of an RFC 7628 §3.2.2 error challenge (or the raw text)."""
    text = challenge.decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {"challenge": text}
    return value if isinstance(value, dict) else {"challenge": text}


class _OAuthMechanism(Mechanism):
    """The shared part of XOAUTH2 and OAUTHBEARER: the token and the error challenge."""

    max_steps = 2
    #: The response to an error challenge.
    _dummy: ClassVar[bytes]

    def __init__(
        self, auth: Authentication, *, host: str | None = None, port: int | None = None
    ) -> None:
        super().__init__(auth)
        #: The server's host name and port, sent by OAUTHBEARER if set.
        self.host = host
        self.port = port
        self._token: OAuth2Token | None = None
        self._resent = False
        self.error_details = None

    async def prepare(self) -> None:
        """Take the cached token, or await the provider for a fresh one."""
        self._token = await _fetch_token(self._auth)

    def _bearer(self) -> str:
        if self._token is None:
            raise RuntimeError(f"{self.name}: await prepare() before the AUTH exchange")
        return self._token.access_token

    @abc.abstractmethod
    def _message(self) -> bytes: ...

    def initial_response(self) -> bytes:
        return self._message()

    def respond(self, challenge: bytes) -> bytes:
        if not challenge and not self._resent and self.error_details is None:
            # An empty 334 asks for the client's message (RFC 4954 §4), not an error.
            self._resent = True
            return self._message()
        # RFC 7628 §3.2.2: an error challenge; the server fails after the dummy response.
        self.error_details = _error_details(challenge)
        self.failed()
        return self._dummy

    def failed(self) -> None:
        self._auth._token_cache.discard(self._token)


class XOAuth2Mechanism(_OAuthMechanism):
    """SASL XOAUTH2 (Google, Microsoft): ``user=U ^A auth=Bearer T ^A ^A``.

    An error challenge (base64 JSON) is answered with an empty response; the
    JSON is kept in :attr:`error_details`.
    """

    name = "XOAUTH2"
    _dummy = b""

    def _message(self) -> bytes:
        return f"user={self._auth.username}\x01auth=Bearer {self._bearer()}\x01\x01".encode()


def _saslname(name: str) -> str:
    """RFC 5802 §5.1 / RFC 7628 §3.1 saslname: ``=`` and ``,`` escaped."""
    return name.replace("=", "=3D").replace(",", "=2C")


class OAuthBearerMechanism(_OAuthMechanism):
    """SASL OAUTHBEARER (RFC 7628): the GS2 header ``n,a=<authzid or user>,`` then
    ``^A host=H ^A port=P ^A auth=Bearer T ^A ^A`` (host and port only when set).

    An error challenge (RFC 7628 §3.2.2, base64 JSON) is answered with the dummy
    response ``^A``; the JSON is kept in :attr:`error_details`.
    """

    name = "OAUTHBEARER"
    _dummy = b"\x01"

    def _message(self) -> bytes:
        identity = self._auth.authzid or self._auth.username
        pairs = []
        if self.host is not None:
            if not self.host or not self.host.isprintable() or "\x01" in self.host:
                raise SMTPInputError(f"invalid OAUTHBEARER host {self.host!r}")
            pairs.append(f"host={self.host}")
        if self.port is not None:
            if isinstance(self.port, bool) or not isinstance(self.port, int):
                raise TypeError("OAUTHBEARER port must be an int")
            if not 0 < self.port < 65536:
                raise SMTPInputError(f"invalid OAUTHBEARER port {self.port!r}")
            pairs.append(f"port={self.port}")
        pairs.append(f"auth=Bearer {self._bearer()}")
        kvpairs = "".join(f"{pair}\x01" for pair in pairs)
        return f"n,a={_saslname(identity)},\x01{kvpairs}\x01".encode()


# --- SCRAM -----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scram_b64decode(value: str, what: str) -> bytes:
    if not value or not _B64_RE.fullmatch(value):
        raise SMTPProtocolError(f"SCRAM {what} is not valid base64")
    # The pattern admits only padded base64 of whole quanta, which b64decode() always takes.
    return base64.b64decode(value, validate=True)


def _scram_attributes(challenge: bytes, what: str) -> list[tuple[str, str]]:
    try:
        text = challenge.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SMTPProtocolError(f"the SCRAM {what} is not UTF-8") from exc
    attributes = []
    for part in text.split(","):
        match = _ATTRIBUTE_RE.fullmatch(part)
        if match is None:
            raise SMTPProtocolError(f"malformed SCRAM {what}")
        attributes.append((match[1], match[2]))
    return attributes


class ScramSha256Mechanism(Mechanism):
    """SASL SCRAM-SHA-256 (RFC 7677, RFC 5802), without channel binding (``n,,``).

    Exchange: the initial response is the client-first message
    ``n,[a=authzid],n=<user>,r=<nonce>``; the server-first message
    (``r=<nonce+server nonce>,s=<salt>,i=<iterations>``) is answered with the
    client-final message ``c=biws,r=…,p=<proof>``; the server-final message
    ``v=<server signature>`` arrives in a 334 challenge (answered with an empty
    response) or as the data of the success, and :meth:`verify_success` is
    True only if that signature was received and is right. ``e=<error>`` ends
    the exchange as a failure (kept in :attr:`error_details` as ``{"e": …}``).

    The password is used as its UTF-8 bytes, *without* SASLprep (RFC 4013): the
    same thing for ASCII passwords, but a server that normalises a non-ASCII
    password with SASLprep may compute a different key. The user name is only
    escaped (``=`` → ``=3D``, ``,`` → ``=2C``).

    A malformed server message, a nonce that does not extend ours, bad base64 in
    an attribute, a mandatory extension (``m=``) or an iteration count outside
    :data:`SCRAM_MIN_ITERATIONS` … :data:`SCRAM_MAX_ITERATIONS` raise
    :exc:`SMTPProtocolError` (the exchange cannot go on, and the connection is
    not reused).

    Args:
        auth: the credentials.
        nonce: the client nonce, for test vectors only; by default 32 random
            URL-safe characters from :func:`secrets.token_urlsafe`.
    """

    name = "SCRAM-SHA-256"
    #: An empty challenge first (a server that ignored the initial response),
    #: the server-first message, the server-final message.
    max_steps = 3
    _digest: ClassVar[str] = "sha256"

    def __init__(self, auth: Authentication, *, nonce: str | None = None) -> None:
        super().__init__(auth)
        if nonce is None:
            nonce = secrets.token_urlsafe(24)
        elif not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
            raise SMTPInputError("a SCRAM nonce is printable ASCII without ','")
        self._nonce = nonce
        authzid = f"a={_saslname(auth.authzid)}" if auth.authzid else ""
        self._gs2_header = f"n,{authzid},"
        self._client_first_bare = f"n={_saslname(auth.username)},r={nonce}"
        self._resent = False
        self._server_signature: bytes | None = None  # expected, once the proof is sent
        self._done = False  # the server-final message (or an error) arrived
        self._verified = False
        self.error_details = None

    def initial_response(self) -> bytes:
        return (self._gs2_header + self._client_first_bare).encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        if self._done:
            raise SMTPProtocolError("the server sent a challenge after the SCRAM exchange ended")
        if self._server_signature is not None:
            self._server_final(challenge)
            return b""
        if not challenge and not self._resent:
            # An empty 334 asks for the client-first message (RFC 4954 §4).
            self._resent = True
            return self.initial_response()
        return self._client_final(challenge)

    def _client_final(self, challenge: bytes) -> bytes:
        attributes = _scram_attributes(challenge, "server-first message")
        if attributes[0][0] == "e":
            self._fail(attributes[0][1])
            return b""
        if attributes[0][0] == "m":
            raise SMTPProtocolError("the server requires an unknown SCRAM extension (m=)")
        if [key for key, _ in attributes[:3]] != ["r", "s", "i"]:
            raise SMTPProtocolError("the SCRAM server-first message lacks r=, s= or i=")
        (_, nonce), (_, salt_b64), (_, count) = attributes[:3]
        if not nonce.startswith(self._nonce) or not _NONCE_RE.fullmatch(nonce):
            raise SMTPProtocolError("the SCRAM server nonce does not extend the client nonce")
        salt = _scram_b64decode(salt_b64, "salt")
        if not count.isascii() or not count.isdigit():
            raise SMTPProtocolError("the SCRAM iteration count is not a number")
        iterations = int(count)
        if iterations < SCRAM_MIN_ITERATIONS:
            raise SMTPProtocolError(
                f"the SCRAM iteration count {iterations} is below {SCRAM_MIN_ITERATIONS}"
            )
        if iterations > SCRAM_MAX_ITERATIONS:
            raise SMTPProtocolError(
                f"the SCRAM iteration count {iterations} is above {SCRAM_MAX_ITERATIONS}"
            )
        server_first = challenge.decode("utf-8")
        without_proof = f"c={_b64(self._gs2_header.encode('utf-8'))},r={nonce}"
        auth_message = ",".join((self._client_first_bare, server_first, without_proof))
        message = auth_message.encode("utf-8")
        digest = self._digest
        salted = hashlib.pbkdf2_hmac(digest, self._auth.password.encode("utf-8"), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", digest)
        stored_key = hashlib.new(digest, client_key).digest()
        client_signature = hmac.digest(stored_key, message, digest)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", digest)
        self._server_signature = hmac.digest(server_key, message, digest)
        return f"{without_proof},p={_b64(proof)}".encode()

    def _server_final(self, data: bytes) -> None:
        expected = self._server_signature
        assert expected is not None
        key, value = _scram_attributes(data, "server-final message")[0]
        self._done = True
        if key == "e":
            self._fail(value)
        elif key == "v":
            signature = _scram_b64decode(value, "server signature")
            self._verified = hmac.compare_digest(signature, expected)
        else:
            raise SMTPProtocolError("the SCRAM server-final message has neither v= nor e=")

    def _fail(self, error: str) -> None:
        self._done = True
        self._verified = False
        self.error_details = {"e": error}

    def verify_success(self, text: bytes | None) -> bool:
        """True only if the server sent its signature and it is right."""
        if text and not self._done and self._server_signature is not None:
            self._server_final(text)
        return self._verified


#: Mechanism classes by name.
MECHANISMS: dict[str, type[Mechanism]] = {
    "PLAIN": PlainMechanism,
    "LOGIN": LoginMechanism,
    "CRAM-MD5": CramMD5Mechanism,
    "SCRAM-SHA-256": ScramSha256Mechanism,
    "XOAUTH2": XOAuth2Mechanism,
    "OAUTHBEARER": OAuthBearerMechanism,
}
# Authentication (``_credentials.py``) checks a mechanism name against MECHANISM_NAMES.
assert tuple(MECHANISMS) == MECHANISM_NAMES

MECHANISM_PREFERENCE: tuple[str, ...] = (
    "OAUTHBEARER",
    "XOAUTH2",
    "SCRAM-SHA-256",
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
)
"""The order of the automatic choice over TLS: the first one the server offers and
the credentials allow (a token provider allows the OAuth ones, a password the
others) is used.

* ``OAUTHBEARER`` then ``XOAUTH2``: with a token provider, the caller asked for
  OAuth, and the providers that issue tokens (Google, Microsoft) are turning
  password logins off. OAUTHBEARER is the standard (RFC 7628); XOAUTH2 is the
  older private form of the same thing.
* ``SCRAM-SHA-256`` first among the password mechanisms: the password never
  crosses the wire (not even inside TLS, so a mis-issued certificate or a TLS
  terminator does not reveal it), the server stores only a salted, iterated
  verifier, and the server proves that it knows that verifier, which no other
  mechanism here does.
* ``PLAIN`` before ``LOGIN``: over TLS they expose the password equally, and
  PLAIN needs one round trip where LOGIN needs three.
* ``CRAM-MD5`` last, and never before PLAIN or LOGIN over TLS: TLS already hides
  the password from the network, so CRAM-MD5 adds no protection there, while it
  forces the server to keep the plaintext password (or an equivalent of it),
  rests on MD5, and proves nothing about the server. It is chosen automatically
  only when the server offers neither PLAIN nor LOGIN (nor SCRAM-SHA-256).

Without TLS (only with ``insecure_auth_over_plaintext=True``),
:data:`PLAINTEXT_MECHANISM_PREFERENCE` applies instead.
"""

PLAINTEXT_MECHANISM_PREFERENCE: tuple[str, ...] = (
    "SCRAM-SHA-256",
    "CRAM-MD5",
    "OAUTHBEARER",
    "XOAUTH2",
    "PLAIN",
    "LOGIN",
)
"""The order of the automatic choice on a connection without TLS: the mechanisms
that keep the secret off the wire come first (SCRAM-SHA-256, then CRAM-MD5, whose
answer can only be attacked offline), then the bearer tokens (short-lived and
scoped, but readable), then PLAIN and LOGIN, which show the password to anyone
on the path."""


def usable_mechanisms(auth: Authentication, *, tls: bool = True) -> tuple[str, ...]:
    """The mechanisms *auth* may use, most preferred first.

    Args:
        auth: the credentials; an explicit :attr:`Authentication.mechanism` is the
            only one usable.
        tls: whether the connection runs TLS (it changes the order, see
            :data:`MECHANISM_PREFERENCE`).
    """
    if auth.mechanism is not None:
        return (auth.mechanism,)
    order = MECHANISM_PREFERENCE if tls else PLAINTEXT_MECHANISM_PREFERENCE
    return tuple(
        name
        for name in order
        if (auth.token_provider is not None if name in OAUTH_MECHANISMS else auth.password)
    )


def choose_mechanism(
    auth: Authentication, offered: frozenset[str], *, tls: bool = True
) -> type[Mechanism] | None:
    """The mechanism to use for *auth* given what the server *offered*, or ``None``.

    Args:
        auth: the credentials.
        offered: the mechanism names of the server's EHLO ``AUTH`` line.
        tls: whether the connection runs TLS (see :data:`MECHANISM_PREFERENCE` and
            :data:`PLAINTEXT_MECHANISM_PREFERENCE`).
    """
    for name in usable_mechanisms(auth, tls=tls):
        if name in offered:
            return MECHANISMS[name]
    return None
