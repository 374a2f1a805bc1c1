"""SASL mechanisms as small sans-io step objects (RFC 4422, used by RFC 4954 AUTH).

Theory of operation
-------------------
A mechanism object knows nothing of SMTP. The session asks it for an optional
*initial response* (sent on the ``AUTH`` line, RFC 4954 §4), then hands it the
decoded payload of every ``334`` challenge and sends back what
:meth:`Mechanism.respond` returns. When the server answers 235, the session calls
:meth:`Mechanism.verify_success` so that mechanisms with mutual authentication
can check the server's proof.

Implemented here:

* ``PLAIN`` (RFC 4616): one initial response, ``authzid NUL authcid NUL passwd``.
* ``LOGIN`` (draft-murchison-sasl-login): the server prompts for the user name,
  then the password. Real servers word the prompts differently (``Username:``,
  ``User Name``, with or without a trailing NUL, in any case), so the prompt is
  matched loosely and, when it is not recognised, the order decides.

Secrets never leave these objects except in the bytes returned to the session,
which marks those lines as secret for the transcript.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import attrs

from ._errors import SMTPInputError

__all__ = ["Authentication", "LoginMechanism", "Mechanism", "PlainMechanism"]


@attrs.frozen
class Authentication:
    """Credentials for SMTP AUTH.

    Args:
        username: the authentication identity.
        password: the secret; never shown in reprs, logs or errors.
        mechanism: a SASL mechanism name (``"PLAIN"``, ``"LOGIN"``), or ``None``
            to pick the strongest one the server offers among those implemented
            (see :data:`MECHANISM_PREFERENCE`).
        authzid: an optional authorization identity (PLAIN only).
    """

    username: str
    password: str = attrs.field(repr=False)
    mechanism: str | None = attrs.field(default=None, kw_only=True)
    authzid: str = attrs.field(default="", kw_only=True)

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
        if self.mechanism is not None:
            if not isinstance(self.mechanism, str):
                raise TypeError("Authentication.mechanism must be a str or None")
            object.__setattr__(self, "mechanism", self.mechanism.upper())
            if self.mechanism not in MECHANISMS:
                raise SMTPInputError(
                    f"unsupported SASL mechanism {self.mechanism!r}; "
                    f"choose one of {', '.join(MECHANISMS)}"
                )


class Mechanism(abc.ABC):
    """One run of a SASL mechanism on the client side."""

    #: The IANA name of the mechanism, as sent on the AUTH line.
    name: ClassVar[str]
    #: The most challenges a well-behaved server sends for this mechanism.
    max_steps: ClassVar[int] = 2

    def __init__(self, auth: Authentication) -> None:
        self._auth = auth

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self._auth.username!r}>"

    async def prepare(self) -> None:
        """Do any waiting the mechanism needs before it starts (e.g. fetch an
        OAuth token). Called by the session just before ``AUTH`` is sent."""

    def initial_response(self) -> bytes | None:
        """The response to send with the AUTH command, or ``None`` to wait for 334."""
        return None

    @abc.abstractmethod
    def respond(self, challenge: bytes) -> bytes:
        """The response to one decoded 334 challenge."""

    def verify_success(self, text: bytes | None) -> bool:
        """Check the server's final data on 235; False fails the authentication."""
        return True


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


#: Mechanism classes by name.
MECHANISMS: dict[str, type[Mechanism]] = {"PLAIN": PlainMechanism, "LOGIN": LoginMechanism}

#: The automatic choice takes the first of these that the server offers. Over
#: TLS, PLAIN and LOGIN expose the password no more than any other mechanism,
#: and PLAIN needs one round trip where LOGIN needs two.
MECHANISM_PREFERENCE: tuple[str, ...] = ("PLAIN", "LOGIN")


def choose_mechanism(auth: Authentication, offered: frozenset[str]) -> type[Mechanism] | None:
    """The mechanism to use for *auth* given what the server *offered*."""
    if auth.mechanism is not None:
        return MECHANISMS[auth.mechanism] if auth.mechanism in offered else None
    for name in MECHANISM_PREFERENCE:
        if name in offered:
            return MECHANISMS[name]
    return None
