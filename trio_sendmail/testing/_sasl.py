"""The server side of the fake server's SASL mechanisms, and strict base64."""

# Theory of operation
# -------------------
#
# RFC 4954 (SMTP AUTH) frames an exchange as 334 challenges and base64 response lines; that
# framing (the AUTH command, the 334 lines, "*" cancellation, the line limit, the transcript's
# redactions) belongs to the dialogue, which hands this module an Exchange to step through. This
# module implements the mechanisms behind it, each checking the client's messages strictly:
# - PLAIN (RFC 4616): authzid NUL authcid NUL password; an authzid other than the authcid fails;
# - LOGIN (draft-murchison-sasl-login): the username and password prompts, in turn;
# - CRAM-MD5 (RFC 2195): a unique msg-id challenge, answered "user SP hex(HMAC-MD5)"; an initial
#   response is refused (RFC 4954 §4: the client does not begin this exchange);
# - SCRAM-SHA-256 (RFC 7677, RFC 5802) without channel binding: client-first (gs2 header "n" or
#   "y", saslname escapes of §5.1), server-first with a random salt, client-final with the nonce
#   and the channel-binding echo checked, then the server signature "v=" (deliberately wrong if
#   configured), and an empty final response. An unknown user takes the same steps and fails;
# - XOAUTH2 (Google's) and OAUTHBEARER (RFC 7628 §3.1): a bearer token looked up in the
#   server's tokens; an unknown token gets the §3.2.2 error challenge, and the client's dummy
#   response to it ("\x01" for OAUTHBEARER, empty for XOAUTH2) then 535.
#
# Every secret comparison is constant-time (hmac.compare_digest). A mechanism ends in exactly
# one of two ways: it returns the authenticated username (the dialogue replies 235), or it has
# already sent the final reply itself (535 5.7.8, or an error) and returns None.
#
# Base64 is strict RFC 4648 (RFC 4954 §4: reject, don't ignore, anything else).

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from typing import Final, Protocol

__all__ = ["IMPLEMENTED_MECHANISMS", "Exchange", "SaslServer", "authenticate", "b64decode"]

IMPLEMENTED_MECHANISMS: Final = frozenset(
    {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"}
)
# The JSON body of the RFC 7628 §3.2.2 error challenge sent for an unknown OAuth token.
_OAUTH_ERROR: Final[Mapping[str, str]] = {
    "status": "invalid_token",
    "scope": "smtp",
    "schemes": "bearer",
}
_SASLNAME_RE: Final = re.compile(r"(?:[^=,]|=2C|=3D)+")
_SCRAM_NONCE_RE: Final = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_OAUTH_KEY_RE: Final = re.compile(r"[A-Za-z]+")
_CRAM_DIGEST_RE: Final = re.compile(rb"[0-9a-f]{32}")
_B64_RE: Final = re.compile(
    rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?",
)


class SaslServer(Protocol):
    """What an AUTH exchange reads of the :class:`~trio_sendmail.testing.FakeSMTPServer`
    (which sits above this module: it imports the dialogue, which imports this)."""

    hostname: str
    users: dict[str, str]
    tokens: dict[str, str]
    login_prompts: tuple[bytes, bytes]
    scram_iterations: int
    scram_bad_server_signature: bool


class Exchange(Protocol):
    """The dialogue's side of an AUTH exchange."""

    async def sasl_step(self, challenge: bytes, *, secret: bool = False) -> bytes | None:
        """Send a 334 challenge and return the decoded response; None after replying an error."""
        ...

    async def reply(self, code: int, status: str, text: str) -> None:
        """Send one of the server's own replies."""
        ...


def b64decode(value: bytes) -> bytes | None:
    """Strict RFC 4648 base64 (RFC 4954 §4: reject, don't ignore, anything else)."""
    if len(value) % 4 or not _B64_RE.fullmatch(value):
        return None
    return base64.b64decode(value, validate=True)


async def authenticate(
    exchange: Exchange, server: SaslServer, mechanism: str, response: bytes | None
) -> str | None:
    """Run *mechanism* (one of IMPLEMENTED_MECHANISMS) from its decoded initial *response*.

    Returns the authenticated username, or None once the final reply has been sent.
    """
    if mechanism == "PLAIN":
        return await _plain(exchange, server, response)
    if mechanism == "LOGIN":
        return await _login(exchange, server, response)
    if mechanism == "CRAM-MD5":
        return await _cram_md5(exchange, server, response)
    if mechanism == "SCRAM-SHA-256":
        return await _scram(exchange, server, response)
    return await _oauth(exchange, server, mechanism, response)


async def _failed(exchange: Exchange) -> None:
    await exchange.reply(535, "5.7.8", "Authentication credentials invalid")


async def _plain(exchange: Exchange, server: SaslServer, response: bytes | None) -> str | None:
    if response is None:
        response = await exchange.sasl_step(b"")
        if response is None:
            return None
    parts = response.split(b"\0")
    try:
        decoded = [part.decode("utf-8") for part in parts]
    except UnicodeDecodeError:
        decoded = []
    if len(decoded) != 3:
        await _failed(exchange)
        return None
    authzid, authcid, password = decoded
    if authzid and authzid != authcid:
        await _failed(exchange)
        return None
    return await _check_credentials(exchange, server, authcid, password)


async def _login(exchange: Exchange, server: SaslServer, username_raw: bytes | None) -> str | None:
    username_prompt, password_prompt = server.login_prompts
    if username_raw is None:
        username_raw = await exchange.sasl_step(username_prompt)
        if username_raw is None:
            return None
    password_raw = await exchange.sasl_step(password_prompt)
    if password_raw is None:
        return None
    try:
        username = username_raw.decode("utf-8")
        password = password_raw.decode("utf-8")
    except UnicodeDecodeError:
        await _failed(exchange)
        return None
    return await _check_credentials(exchange, server, username, password)


async def _check_credentials(
    exchange: Exchange, server: SaslServer, username: str, password: str
) -> str | None:
    expected = server.users.get(username)
    if expected is None or not hmac.compare_digest(
        expected.encode("utf-8"), password.encode("utf-8")
    ):
        await _failed(exchange)
        return None
    return username


async def _cram_md5(exchange: Exchange, server: SaslServer, response: bytes | None) -> str | None:
    """RFC 2195: a unique msg-id challenge; the answer is ``user SP hex(HMAC-MD5)``."""
    if response is not None:
        # RFC 4954 §4: the client does not begin a CRAM-MD5 exchange.
        await exchange.reply(501, "5.5.2", "CRAM-MD5 does not allow an initial response")
        return None
    challenge = f"<{secrets.randbelow(10**9)}.{int(time.time())}@{server.hostname}>".encode()
    answer = await exchange.sasl_step(challenge)
    if answer is None:
        return None
    username_raw, _, digest = answer.rpartition(b" ")
    try:
        username = username_raw.decode("utf-8")
    except UnicodeDecodeError:
        username = ""
    password = server.users.get(username)
    if password is None or not _CRAM_DIGEST_RE.fullmatch(digest):
        await _failed(exchange)
        return None
    expected = hmac.digest(password.encode("utf-8"), challenge, "md5").hex().encode()
    if not hmac.compare_digest(expected, digest):
        await _failed(exchange)
        return None
    return username


async def _oauth(
    exchange: Exchange, server: SaslServer, mechanism: str, response: bytes | None
) -> str | None:
    """XOAUTH2 or OAUTHBEARER (RFC 7628), with the §3.2.2 error challenge."""
    if response is None:
        response = await exchange.sasl_step(b"")
        if response is None:
            return None
    parse = _parse_oauthbearer if mechanism == "OAUTHBEARER" else _parse_xoauth2
    parsed = parse(response)
    if parsed is None:
        await _failed(exchange)
        return None
    user, token = parsed
    owner = None
    for known, name in server.tokens.items():
        if hmac.compare_digest(known.encode("utf-8"), token.encode("utf-8")):
            owner = name
    if owner is not None and user in (None, owner):
        return owner
    error = json.dumps(_OAUTH_ERROR, separators=(",", ":")).encode()
    dummy = await exchange.sasl_step(error)
    if dummy is None:
        return None
    if dummy != (b"\x01" if mechanism == "OAUTHBEARER" else b""):
        await exchange.reply(501, "5.5.2", "Expected the dummy response to the error challenge")
        return None
    await _failed(exchange)
    return None


async def _scram(exchange: Exchange, server: SaslServer, response: bytes | None) -> str | None:
    """SCRAM-SHA-256 (RFC 7677, RFC 5802) without channel binding."""
    if response is None:
        response = await exchange.sasl_step(b"")
        if response is None:
            return None
    first = _parse_scram_client_first(response)
    if first is None:
        await _failed(exchange)
        return None
    gs2_header, bare, username, client_nonce = first
    password = server.users.get(username)
    # An unknown user goes through the same steps (no user enumeration) and fails.
    secret = password if password is not None else secrets.token_hex(16)
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, server.scram_iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    nonce = client_nonce + secrets.token_urlsafe(18)
    salt_b64 = base64.b64encode(salt).decode("ascii")
    server_first = f"r={nonce},s={salt_b64},i={server.scram_iterations}"
    final = await exchange.sasl_step(server_first.encode("ascii"))
    if final is None:
        return None
    parsed = _parse_scram_client_final(final, gs2_header, nonce)
    if parsed is None or password is None:
        await _failed(exchange)
        return None
    without_proof, proof = parsed
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    client_signature = hmac.digest(stored_key, auth_message, "sha256")
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
    if not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key):
        await _failed(exchange)
        return None
    signature = hmac.digest(server_key, auth_message, "sha256")
    if server.scram_bad_server_signature:
        signature = bytes(byte ^ 0x5A for byte in signature)
    answer = await exchange.sasl_step(b"v=" + base64.b64encode(signature), secret=True)
    if answer is None:
        return None
    if answer:
        await _failed(exchange)
        return None
    return username


def _unescape_saslname(value: str) -> str | None:
    """RFC 5802 §5.1 saslname: ``=2C`` is ``,`` and ``=3D`` is ``=``; None if malformed."""
    if not _SASLNAME_RE.fullmatch(value):
        return None
    return value.replace("=2C", ",").replace("=3D", "=")


def _bearer(value: str) -> str | None:
    """The token of an ``auth=Bearer <token>`` value (the scheme is case-insensitive)."""
    scheme, _, token = value.partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def _parse_xoauth2(response: bytes) -> tuple[str | None, str] | None:
    """``user=U ^A auth=Bearer T ^A ^A`` -> (user, token), or None if malformed."""
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\x01\x01"):
        return None
    fields = text[:-2].split("\x01")
    if len(fields) != 2 or not fields[0].startswith("user=") or not fields[1].startswith("auth="):
        return None
    token = _bearer(fields[1][5:])
    return None if token is None else (fields[0][5:], token)


def _parse_oauthbearer(response: bytes) -> tuple[str | None, str] | None:
    """RFC 7628 §3.1 client response -> (authzid or None, token), or None if malformed."""
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        return None
    parts = text.split(",", 2)
    if len(parts) != 3 or parts[0] not in ("n", "y"):  # no channel binding is offered
        return None
    authz, rest = parts[1], parts[2]
    user = None
    if authz:
        if not authz.startswith("a="):
            return None
        user = _unescape_saslname(authz[2:])
        if user is None:
            return None
    if len(rest) < 2 or rest[0] != "\x01" or not rest.endswith("\x01\x01"):
        return None
    pairs: dict[str, str] = {}
    for pair in rest[1:-2].split("\x01") if len(rest) > 2 else []:
        key, equals, value = pair.partition("=")
        if not equals or not _OAUTH_KEY_RE.fullmatch(key) or key in pairs:
            return None
        pairs[key] = value
    token = _bearer(pairs.get("auth", ""))
    return None if token is None else (user, token)


def _parse_scram_client_first(response: bytes) -> tuple[str, str, str, str] | None:
    """-> (gs2 header, client-first-message-bare, username, client nonce), or None."""
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        return None
    parts = text.split(",", 2)
    if len(parts) != 3 or parts[0] not in ("n", "y"):  # SCRAM-SHA-256-PLUS is not offered
        return None
    flag, authz, bare = parts
    attributes = bare.split(",")
    if len(attributes) < 2 or not attributes[0].startswith("n="):
        return None
    if not attributes[1].startswith("r=") or not _SCRAM_NONCE_RE.fullmatch(attributes[1][2:]):
        return None
    username = _unescape_saslname(attributes[0][2:])
    if username is None:
        return None
    if authz and (not authz.startswith("a=") or _unescape_saslname(authz[2:]) != username):
        return None
    return f"{flag},{authz},", bare, username, attributes[1][2:]


def _parse_scram_client_final(
    response: bytes, gs2_header: str, nonce: str
) -> tuple[str, bytes] | None:
    """-> (client-final-message-without-proof, proof), or None if malformed or foreign."""
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        return None
    without_proof, separator, proof_b64 = text.rpartition(",p=")
    attributes = without_proof.split(",")
    if not separator or len(attributes) < 2:
        return None
    binding = b64decode(attributes[0][2:].encode()) if attributes[0].startswith("c=") else None
    if binding != gs2_header.encode("utf-8") or attributes[1] != f"r={nonce}":
        return None
    proof = b64decode(proof_b64.encode())
    if proof is None or len(proof) != hashlib.sha256().digest_size:
        return None
    return without_proof, proof
