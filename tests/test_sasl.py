"""Tests of the SASL mechanisms: RFC 4616 PLAIN, draft-murchison-sasl-login LOGIN, RFC 2195
CRAM-MD5, RFC 7677/5802 SCRAM-SHA-256, XOAUTH2 and RFC 7628 OAUTHBEARER, and the choice.

RFC vectors: RFC 4616 §4 (PLAIN), RFC 2195 §2 (CRAM-MD5), RFC 7677 §3 (SCRAM-SHA-256),
RFC 7628 §4.1 (OAUTHBEARER success) and §4.3 (OAUTHBEARER error challenge).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Coroutine
from typing import Any, cast

import pytest

from trio_sendmail._address import Domain
from trio_sendmail._core import ClientCore, State
from trio_sendmail._errors import SMTPInputError, SMTPProtocolError
from trio_sendmail._reply_errors import SMTPAuthenticationError
from trio_sendmail._sasl import (
    MECHANISM_PREFERENCE,
    MECHANISMS,
    PLAINTEXT_MECHANISM_PREFERENCE,
    SCRAM_MAX_ITERATIONS,
    SCRAM_MIN_ITERATIONS,
    TOKEN_REFRESH_MARGIN,
    Authentication,
    CramMD5Mechanism,
    LoginMechanism,
    Mechanism,
    OAuth2Token,
    OAuthBearerMechanism,
    PlainMechanism,
    ScramSha256Mechanism,
    XOAuth2Mechanism,
    choose_mechanism,
    usable_mechanisms,
)

SECRET = "s3cr3t-pa55w0rd"

# --------------------------------------------------------------------------------------------
# Authentication


def test_authentication_fields() -> None:
    auth = Authentication("user", SECRET, mechanism="plain", authzid="admin")
    assert auth.username == "user"
    assert auth.password == SECRET
    assert auth.mechanism == "PLAIN"
    assert auth.authzid == "admin"


def test_authentication_defaults() -> None:
    auth = Authentication("user", SECRET)
    assert auth.mechanism is None
    assert auth.authzid == ""


@pytest.mark.parametrize(
    "auth",
    [
        Authentication("user", SECRET),
        Authentication("user", SECRET, mechanism="LOGIN", authzid="boss"),
    ],
)
def test_repr_never_shows_the_password(auth: Authentication) -> None:
    text = repr(auth)
    assert SECRET not in text
    assert "user" in text
    assert base64.b64encode(SECRET.encode()).decode() not in text
    assert SECRET not in str(auth)


def test_mechanism_repr_never_shows_the_password() -> None:
    auth = Authentication("user", SECRET)
    for mechanism in (PlainMechanism(auth), LoginMechanism(auth)):
        assert SECRET not in repr(mechanism)
        assert "user" in repr(mechanism)


@pytest.mark.parametrize("field", ["username", "password", "authzid"])
def test_nul_is_refused(field: str) -> None:
    kwargs: dict[str, Any] = {"username": "user", "password": SECRET, "authzid": ""}
    kwargs[field] = "a\x00b"
    with pytest.raises(SMTPInputError, match=field) as info:
        Authentication(**kwargs)
    assert SECRET not in str(info.value)


def test_nul_error_message_does_not_show_the_password() -> None:
    with pytest.raises(SMTPInputError) as info:
        Authentication("user", "pass\x00word")
    assert "pass" not in str(info.value).replace("password", "")


@pytest.mark.parametrize(
    "mechanism", ["SCRAM-SHA-1", "GSSAPI", "", "PLAIN ", "SCRAM-SHA-256-PLUS"]
)
def test_unsupported_mechanism_is_refused(mechanism: str) -> None:
    with pytest.raises(SMTPInputError, match="unsupported SASL mechanism"):
        Authentication("user", SECRET, mechanism=mechanism)


def test_mechanism_name_is_upper_cased() -> None:
    assert Authentication("user", SECRET, mechanism="login").mechanism == "LOGIN"


@pytest.mark.parametrize("field", ["username", "password", "authzid"])
def test_non_str_field_is_a_type_error(field: str) -> None:
    kwargs: dict[str, Any] = {"username": "user", "password": SECRET, "authzid": ""}
    kwargs[field] = b"bytes"
    with pytest.raises(TypeError, match=field):
        Authentication(**kwargs)


@pytest.mark.parametrize("value", [None, 123])
def test_non_str_password_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        Authentication("user", cast(str, value))


@pytest.mark.parametrize("value", [b"PLAIN", 5])
def test_non_str_mechanism_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="mechanism"):
        Authentication("user", SECRET, mechanism=cast(str, value))


def test_authentication_is_frozen() -> None:
    auth = Authentication("user", SECRET)
    with pytest.raises(AttributeError):
        auth.password = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# PLAIN


def test_plain_initial_response_without_authzid() -> None:
    mech = PlainMechanism(Authentication("tim", "tanstaaftanstaaf"))
    assert mech.name == "PLAIN"
    assert mech.initial_response() == b"\x00tim\x00tanstaaftanstaaf"
    # RFC 4616 §4 example, base64-encoded as RFC 4954 sends it
    assert base64.b64encode(mech.initial_response()) == b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm"


def test_plain_initial_response_with_authzid() -> None:
    mech = PlainMechanism(Authentication("Kurt", "xipj3plmq", authzid="Ursel"))
    assert mech.initial_response() == b"Ursel\x00Kurt\x00xipj3plmq"


def test_plain_is_utf8() -> None:
    mech = PlainMechanism(Authentication("jörg", "pässwörd"))
    assert mech.initial_response() == "\x00jörg\x00pässwörd".encode()


def test_plain_answers_an_empty_challenge_with_the_same_message() -> None:
    mech = PlainMechanism(Authentication("tim", "tanstaaf"))
    assert mech.respond(b"") == b"\x00tim\x00tanstaaf"


def test_plain_takes_one_step_and_verifies_success() -> None:
    mech = PlainMechanism(Authentication("tim", "x"))
    assert mech.max_steps == 1
    assert mech.verify_success(None) is True


# --------------------------------------------------------------------------------------------
# LOGIN


@pytest.mark.parametrize(
    "prompt",
    [b"Username:", b"User Name\x00", b"USERNAME", b"username: ", b"User_Name:", b"Login:"],
)
def test_login_answers_user_name_prompts(prompt: bytes) -> None:
    mech = LoginMechanism(Authentication("user", SECRET))
    assert mech.respond(prompt) == b"user"


@pytest.mark.parametrize("prompt", [b"Password:", b"Password\x00", b"PASSWORD", b"passwd:"])
def test_login_answers_password_prompts(prompt: bytes) -> None:
    mech = LoginMechanism(Authentication("user", SECRET))
    assert mech.respond(prompt) == SECRET.encode()


def test_login_answers_by_prompt_not_by_order() -> None:
    mech = LoginMechanism(Authentication("user", SECRET))
    assert mech.respond(b"Password:") == SECRET.encode()
    assert mech.respond(b"Username:") == b"user"


def test_login_unknown_prompts_are_answered_by_order() -> None:
    mech = LoginMechanism(Authentication("user", SECRET))
    assert mech.respond(b"Who goes there?") == b"user"
    assert mech.respond(b"\xff\xfe") == SECRET.encode()


def test_login_empty_prompts_are_answered_by_order() -> None:
    mech = LoginMechanism(Authentication("user", SECRET))
    assert mech.respond(b"") == b"user"
    assert mech.respond(b"") == SECRET.encode()


def test_login_known_then_unknown_prompt() -> None:
    mech = LoginMechanism(Authentication("user", SECRET))
    assert mech.respond(b"Username:") == b"user"
    assert mech.respond(b"???") == SECRET.encode()


def test_login_has_no_initial_response_and_two_steps() -> None:
    mech = LoginMechanism(Authentication("user", SECRET))
    assert mech.name == "LOGIN"
    assert mech.initial_response() is None
    assert mech.max_steps == 2


def test_login_is_utf8() -> None:
    mech = LoginMechanism(Authentication("jörg", "pässwörd"))
    assert mech.respond(b"Username:") == "jörg".encode()
    assert mech.respond(b"Password:") == "pässwörd".encode()


# --------------------------------------------------------------------------------------------
# Helpers

TOKEN = "ya29.Zq8xKv3mW-p7Ln_T4s"
OTHER_TOKEN = "ya29.Bw6yHu2nQ-r5Jk_P9d"


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits for an event loop (plain awaits only)."""
    try:
        while True:
            coro.send(None)
    except StopIteration as stop:
        return stop.value


class Provider:
    """A fake async token provider that hands out the given tokens in turn."""

    def __init__(self, *tokens: str | OAuth2Token) -> None:
        self.tokens = list(tokens)
        self.calls = 0

    async def __call__(self) -> str | OAuth2Token:
        self.calls += 1
        return self.tokens.pop(0) if len(self.tokens) > 1 else self.tokens[0]


def oauth(provider: Provider | None = None, **kwargs: Any) -> Authentication:
    return Authentication("user@example.com", token_provider=provider or Provider(TOKEN), **kwargs)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def reprs_are_clean(obj: object, *secrets: str) -> None:
    for text in (repr(obj), str(obj)):
        for secret in secrets:
            assert secret not in text
            assert base64.b64encode(secret.encode()).decode() not in text


# --------------------------------------------------------------------------------------------
# Authentication: credentials for every mechanism


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_every_mechanism_name_is_accepted(mechanism: str) -> None:
    auth = Authentication(
        "user", SECRET, mechanism=mechanism.lower(), token_provider=Provider(TOKEN)
    )
    assert auth.mechanism == mechanism


def test_passwordless_authentication_with_a_token_provider() -> None:
    provider = Provider(TOKEN)
    auth = Authentication("user@gmail.com", token_provider=provider)
    assert auth.password == ""
    assert auth.token_provider is provider
    assert "token_provider" not in repr(auth) and "Provider" not in repr(auth)
    assert Authentication("user@gmail.com", token_provider=provider, mechanism="xoauth2")


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth_mechanisms_need_a_token_provider(mechanism: str) -> None:
    with pytest.raises(SMTPInputError, match="token_provider"):
        Authentication("user", SECRET, mechanism=mechanism)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"])
def test_password_mechanisms_need_a_password(mechanism: str) -> None:
    with pytest.raises(SMTPInputError, match="password"):
        Authentication("user", mechanism=mechanism, token_provider=Provider(TOKEN))


def test_some_credential_is_needed() -> None:
    with pytest.raises(SMTPInputError, match="password or a token_provider"):
        Authentication("user")


def test_token_provider_must_be_callable() -> None:
    with pytest.raises(TypeError, match="token_provider"):
        Authentication("user", token_provider=cast(Any, TOKEN))


@pytest.mark.parametrize("field", ["username", "authzid"])
def test_oauth_field_separator_is_refused(field: str) -> None:
    kwargs: dict[str, Any] = {"username": "user", "authzid": ""}
    kwargs[field] = "a\x01b"
    with pytest.raises(SMTPInputError, match=field):
        Authentication(**kwargs, token_provider=Provider(TOKEN))
    Authentication(**kwargs, password=SECRET)  # harmless without OAuth


def test_the_token_cache_is_not_part_of_the_value() -> None:
    provider = Provider(TOKEN)
    first, second = oauth(provider), oauth(provider)
    drive(XOAuth2Mechanism(first).prepare())
    assert first == second and hash(first) == hash(second)
    assert "cache" not in repr(first)
    reprs_are_clean(first, TOKEN)


# --------------------------------------------------------------------------------------------
# OAuth2Token


def test_oauth2_token_repr_hides_the_token() -> None:
    token = OAuth2Token(TOKEN, expires_at=1234.5)
    assert token.access_token == TOKEN
    assert "1234.5" in repr(token)
    reprs_are_clean(token, TOKEN)
    assert OAuth2Token(TOKEN).expires_at is None


@pytest.mark.parametrize("value", ["", "has space", "a\x01b", "tök", "=abc", "a,b"])
def test_oauth2_token_must_be_a_bearer_token(value: str) -> None:
    with pytest.raises(SMTPInputError, match="bearer token") as info:
        OAuth2Token(value)
    if value:
        assert value not in str(info.value)


@pytest.mark.parametrize("value", ["abc", "a-b.c_d~e+f/g==", TOKEN, "x" * 2000])
def test_oauth2_token_accepts_b64token(value: str) -> None:
    assert OAuth2Token(value).access_token == value


def test_oauth2_token_types() -> None:
    with pytest.raises(TypeError):
        OAuth2Token(cast(str, b"bytes"))
    with pytest.raises(TypeError):
        OAuth2Token(TOKEN, expires_at=cast(float, "soon"))
    with pytest.raises(TypeError):
        OAuth2Token(TOKEN, expires_at=cast(float, True))


def test_oauth2_token_expiry() -> None:
    assert not OAuth2Token(TOKEN).expires_within(10**9)
    token = OAuth2Token(TOKEN, expires_at=1000.0)
    assert token.expires_within(60, now=950.0)
    assert not token.expires_within(60, now=900.0)
    assert OAuth2Token(TOKEN, expires_at=time.time() + 30).expires_within(TOKEN_REFRESH_MARGIN)


# --------------------------------------------------------------------------------------------
# CRAM-MD5 (RFC 2195)

RFC2195_CHALLENGE = b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
RFC2195_RESPONSE = b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"


def test_cram_md5_rfc2195_vector() -> None:
    mech = CramMD5Mechanism(Authentication("tim", "tanstaaftanstaaf"))
    assert mech.name == "CRAM-MD5" and mech.max_steps == 1
    assert mech.initial_response() is None
    challenge = base64.b64decode(RFC2195_CHALLENGE)
    assert challenge == b"<1896.697170952@postoffice.reston.mci.net>"
    response = mech.respond(challenge)
    assert response == b"tim b913a602c7eda7a495b4e6e7334d3890"
    assert base64.b64encode(response) == RFC2195_RESPONSE
    assert mech.verify_success(None) is True
    reprs_are_clean(mech, "tanstaaftanstaaf", "b913a602c7eda7a495b4e6e7334d3890")


def test_cram_md5_through_the_core() -> None:
    lines: list[str] = []
    core = ready_core(lines.append)
    core.auth(CramMD5Mechanism(Authentication("tim", "tanstaaftanstaaf")))
    assert core.data_to_send() == b"AUTH CRAM-MD5\r\n"
    feed(core, b"334 " + RFC2195_CHALLENGE + b"\r\n")
    assert core.data_to_send() == RFC2195_RESPONSE + b"\r\n"
    feed(core, b"235 2.7.0 Authentication successful\r\n")
    assert core.authenticated
    assert not any("b913a602" in line or "tanstaaf" in line for line in lines)


def test_cram_md5_is_utf8_and_refuses_an_empty_challenge() -> None:
    mech = CramMD5Mechanism(Authentication("jörg", "pässwörd"))
    assert mech.respond(b"<1.2@x>").startswith("jörg ".encode())
    assert len(mech.respond(b"<1.2@x>")) == len("jörg ".encode()) + 32
    with pytest.raises(SMTPProtocolError, match="empty"):
        mech.respond(b"")


# --------------------------------------------------------------------------------------------
# SCRAM-SHA-256 (RFC 7677 §3)

RFC7677_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC7677_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC7677_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC7677_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
RFC7677_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC7677_SIGNATURE = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def scram(nonce: str = RFC7677_NONCE, **kwargs: Any) -> ScramSha256Mechanism:
    return ScramSha256Mechanism(Authentication("user", "pencil", **kwargs), nonce=nonce)


def scram_after_first() -> ScramSha256Mechanism:
    mech = scram()
    mech.initial_response()
    assert mech.respond(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL
    return mech


def test_scram_rfc7677_vector() -> None:
    mech = scram()
    assert mech.name == "SCRAM-SHA-256" and mech.max_steps == 3
    assert mech.initial_response() == RFC7677_CLIENT_FIRST
    assert mech.respond(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL
    assert mech.verify_success(None) is False  # nothing proved yet
    assert mech.respond(RFC7677_SERVER_FINAL) == b""
    assert mech.verify_success(None) is True
    assert mech.error_details is None
    reprs_are_clean(mech, "pencil", RFC7677_PROOF, RFC7677_SIGNATURE)


def test_scram_rfc7677_vector_through_the_core() -> None:
    lines: list[str] = []
    core = ready_core(lines.append)
    core.auth(scram())
    assert core.data_to_send() == b"AUTH SCRAM-SHA-256 " + b64(RFC7677_CLIENT_FIRST) + b"\r\n"
    feed(core, b"334 " + b64(RFC7677_SERVER_FIRST) + b"\r\n")
    assert core.data_to_send() == b64(RFC7677_CLIENT_FINAL) + b"\r\n"
    feed(core, b"334 " + b64(RFC7677_SERVER_FINAL) + b"\r\n")
    assert core.data_to_send() == b"\r\n"  # the empty response
    feed(core, b"235 2.7.0 Authentication successful\r\n")
    assert core.authenticated
    assert not any(RFC7677_PROOF in line or "pencil" in line for line in lines)


def test_scram_wrong_signature_fails_even_on_235_through_the_core() -> None:
    core = ready_core()
    core.auth(scram())
    feed(core, b"334 " + b64(RFC7677_SERVER_FIRST) + b"\r\n")
    wrong = b"v=" + b64(bytes(32))
    feed(core, b"334 " + b64(wrong) + b"\r\n")
    with pytest.raises(SMTPAuthenticationError, match="prove"):
        feed(core, b"235 2.7.0 Authentication successful\r\n")
    assert not core.authenticated
    assert core.state is State.BROKEN


def test_scram_235_without_the_server_final_message_fails() -> None:
    core = ready_core()
    core.auth(scram())
    feed(core, b"334 " + b64(RFC7677_SERVER_FIRST) + b"\r\n")
    with pytest.raises(SMTPAuthenticationError):
        feed(core, b"235 2.7.0 Authentication successful\r\n")
    assert not core.authenticated


def test_scram_server_final_as_additional_data_of_the_success() -> None:
    mech = scram_after_first()
    assert mech.verify_success(RFC7677_SERVER_FINAL) is True
    mech = scram_after_first()
    assert mech.verify_success(b"v=" + b64(bytes(32))) is False
    mech = scram_after_first()
    assert mech.verify_success(b"e=invalid-proof") is False
    assert mech.error_details == {"e": "invalid-proof"}


def test_scram_wrong_server_signature_is_a_failure() -> None:
    mech = scram_after_first()
    tampered = "7" + RFC7677_SIGNATURE[1:]
    assert mech.respond(b"v=" + tampered.encode()) == b""
    assert mech.verify_success(None) is False
    assert mech.error_details is None


def test_scram_server_final_error() -> None:
    mech = scram_after_first()
    assert mech.respond(b"e=invalid-proof") == b""
    assert mech.error_details == {"e": "invalid-proof"}
    assert mech.verify_success(None) is False


def test_scram_error_instead_of_the_server_first_message() -> None:
    mech = scram()
    mech.initial_response()
    assert mech.respond(b"e=unknown-user") == b""
    assert mech.error_details == {"e": "unknown-user"}
    assert mech.verify_success(None) is False
    with pytest.raises(SMTPProtocolError, match="after"):
        mech.respond(RFC7677_SERVER_FIRST)


def test_scram_challenge_after_the_end_is_a_protocol_error() -> None:
    mech = scram_after_first()
    mech.respond(RFC7677_SERVER_FINAL)
    with pytest.raises(SMTPProtocolError):
        mech.respond(RFC7677_SERVER_FINAL)


def test_scram_empty_challenge_asks_for_the_client_first_message_once() -> None:
    mech = scram()
    mech.initial_response()
    assert mech.respond(b"") == RFC7677_CLIENT_FIRST
    with pytest.raises(SMTPProtocolError):
        mech.respond(b"")
    assert mech.respond(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL


SERVER_NONCE = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"


@pytest.mark.parametrize(
    ("server_first", "match"),
    [
        (b"r=someoneElsesNonce123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=rOprNGfw,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=rOprNGfwEbeRWgbNEkqO\x7f,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4095".encode(), "below 4096"),
        (f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1".encode(), "below"),
        (f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0".encode(), "below"),
        (f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999".encode(), "above"),
        (f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-4096".encode(), "number"),
        (f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4k".encode(), "number"),
        (f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=".encode(), "number"),
        (f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096".encode(), "base64"),
        (f"r={SERVER_NONCE},s=not base64!,i=4096".encode(), "base64"),
        (f"r={SERVER_NONCE},s=,i=4096".encode(), "base64"),
        (f"r={SERVER_NONCE},i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==".encode(), "lacks"),
        (f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==".encode(), "lacks"),
        (f"m=ext,r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode(), "extension"),
        (b"garbage", "malformed"),
        (b"r=abc,,i=4096", "malformed"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_scram_bad_server_first_message_is_a_protocol_error(
    server_first: bytes, match: str
) -> None:
    mech = scram()
    mech.initial_response()
    with pytest.raises(SMTPProtocolError, match=match):
        mech.respond(server_first)
    assert mech.verify_success(None) is False


def test_scram_iteration_bounds_and_extensions() -> None:
    assert SCRAM_MIN_ITERATIONS == 4096
    mech = scram()
    mech.initial_response()
    extended = RFC7677_SERVER_FIRST + b",x=future-extension"
    assert mech.respond(extended).startswith(b"c=biws,r=")
    mech = scram()
    high = f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i={SCRAM_MAX_ITERATIONS + 1}"
    with pytest.raises(SMTPProtocolError, match="above"):
        mech.respond(high.encode())


@pytest.mark.parametrize(
    ("server_final", "match"),
    [
        (b"v=not base64!", "base64"),
        (b"v=6rriTRBi23WpRR", "base64"),
        (b"v=", "base64"),
        (b"x=whatever", "neither"),
        (b"nonsense", "malformed"),
    ],
)
def test_scram_bad_server_final_message_is_a_protocol_error(
    server_final: bytes, match: str
) -> None:
    mech = scram_after_first()
    with pytest.raises(SMTPProtocolError, match=match):
        mech.respond(server_final)
    assert mech.verify_success(None) is False


def test_scram_username_is_escaped_and_authzid_goes_in_the_gs2_header() -> None:
    mech = ScramSha256Mechanism(Authentication("a=b,c", "pw"), nonce="abc")
    assert mech.initial_response() == b"n,,n=a=3Db=2Cc,r=abc"
    mech = ScramSha256Mechanism(Authentication("user", "pw", authzid="b,oss"), nonce="abc")
    assert mech.initial_response() == b"n,a=b=2Coss,n=user,r=abc"
    final = mech.respond(b"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final.startswith(b"c=" + b64(b"n,a=b=2Coss,") + b",r=abcdef,p=")


def test_scram_nonce_is_random_by_default() -> None:
    auth = Authentication("user", "pencil")
    first = ScramSha256Mechanism(auth).initial_response()
    second = ScramSha256Mechanism(auth).initial_response()
    assert first != second
    nonce = first.split(b",r=")[1]
    assert len(nonce) >= 32 and b"," not in nonce


@pytest.mark.parametrize("nonce", ["", "a,b", "caf\u00e9", "sp ace"])
def test_scram_injected_nonce_is_checked(nonce: str) -> None:
    with pytest.raises(SMTPInputError, match="nonce"):
        ScramSha256Mechanism(Authentication("user", "pencil"), nonce=nonce)


def test_scram_password_is_utf8_without_saslprep() -> None:
    # A non-ASCII password is used as its UTF-8 bytes (documented: no SASLprep).
    one = ScramSha256Mechanism(Authentication("user", "pässword"), nonce="abc")
    two = ScramSha256Mechanism(Authentication("user", "pa\u0308ssword"), nonce="abc")
    server_first = b"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    assert one.respond(server_first) != two.respond(server_first)


# --------------------------------------------------------------------------------------------
# XOAUTH2 and OAUTHBEARER (RFC 7628)

RFC7628_TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
RFC7628_INITIAL = (
    b"bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVy"
    b"IHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB"
)
RFC7628_ERROR = (
    b"eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJleGFtcGxlX3Njb3BlIiwib3BlbmlkLWNvbmZpZ3VyYXRp"
    b"b24iOiJodHRwczovL2V4YW1wbGUuY29tLy53ZWxsLWtub3duL29wZW5pZC1jb25maWd1cmF0aW9uIn0="
)


async def test_oauthbearer_rfc7628_success_vector() -> None:
    auth = Authentication("user@example.com", token_provider=Provider(RFC7628_TOKEN))
    mech = OAuthBearerMechanism(auth, host="server.example.com", port=143)
    await mech.prepare()
    initial = mech.initial_response()
    assert initial == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    assert base64.b64encode(initial) == RFC7628_INITIAL
    assert mech.verify_success(None) is True
    reprs_are_clean(mech, RFC7628_TOKEN)


async def test_oauthbearer_rfc7628_error_challenge() -> None:
    provider = Provider(RFC7628_TOKEN)
    auth = Authentication("user@example.com", token_provider=provider)
    mech = OAuthBearerMechanism(auth)
    await mech.prepare()
    assert mech.initial_response() == (
        b"n,a=user@example.com,\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    assert mech.max_steps == 2
    assert mech.respond(base64.b64decode(RFC7628_ERROR)) == b"\x01"  # the dummy response
    assert mech.error_details == {
        "status": "invalid_token",
        "scope": "example_scope",
        "openid-configuration": "https://example.com/.well-known/openid-configuration",
    }
    # The refused token is forgotten: the next attempt asks the provider again.
    await OAuthBearerMechanism(auth).prepare()
    assert provider.calls == 2


async def test_oauthbearer_through_the_core_error_path() -> None:
    core = ready_core()
    mech = OAuthBearerMechanism(oauth())
    await mech.prepare()
    core.auth(mech)
    expected = b64(f"n,a=user@example.com,\x01auth=Bearer {TOKEN}\x01\x01".encode())
    assert core.data_to_send() == b"AUTH OAUTHBEARER " + expected + b"\r\n"
    feed(core, b"334 " + RFC7628_ERROR + b"\r\n")
    assert core.data_to_send() == b"AQ==\r\n"  # base64 of %x01
    events = feed(core, b"535 5.7.8 Authentication credentials invalid\r\n")
    assert events[-1].reply.code == 535 and not core.authenticated
    assert mech.error_details is not None and mech.error_details["status"] == "invalid_token"


async def test_xoauth2_initial_response_and_error_challenge() -> None:
    provider = Provider(TOKEN)
    auth = oauth(provider)
    mech = XOAuth2Mechanism(auth)
    await mech.prepare()
    assert mech.name == "XOAUTH2"
    assert (
        mech.initial_response() == f"user=user@example.com\x01auth=Bearer {TOKEN}\x01\x01".encode()
    )
    google = b'{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}'
    assert mech.respond(google) == b""  # XOAUTH2's dummy response is empty
    assert mech.error_details == {
        "status": "400",
        "schemes": "Bearer",
        "scope": "https://mail.google.com/",
    }
    reprs_are_clean(mech, TOKEN)
    await XOAuth2Mechanism(auth).prepare()
    assert provider.calls == 2


async def test_xoauth2_through_the_core() -> None:
    core = ready_core()
    mech = XOAuth2Mechanism(oauth())
    await mech.prepare()
    core.auth(mech)
    core.data_to_send()
    feed(core, b"334 " + b64(b'{"status":"401"}') + b"\r\n")
    assert core.data_to_send() == b"\r\n"  # an empty response line
    feed(core, b"535 5.7.8 Username and Password not accepted\r\n")
    assert mech.error_details == {"status": "401"}


@pytest.mark.parametrize("cls", [XOAuth2Mechanism, OAuthBearerMechanism])
async def test_oauth_empty_challenge_asks_for_the_message_once(
    cls: type[XOAuth2Mechanism | OAuthBearerMechanism],
) -> None:
    mech = cls(oauth())
    await mech.prepare()
    assert mech.respond(b"") == mech.initial_response()
    assert mech.respond(b"") == mech._dummy
    assert mech.error_details == {"challenge": ""}


@pytest.mark.parametrize(
    ("challenge", "details"),
    [
        (b"not json", {"challenge": "not json"}),
        (b'["a", "list"]', {"challenge": '["a", "list"]'}),
        (b"[" * 100_000, {"challenge": "[" * 100_000}),
        (b'{"status": "invalid_token"}', {"status": "invalid_token"}),
        (b"\xff", {"challenge": "\ufffd"}),
    ],
)
async def test_oauth_error_details_from_any_challenge(
    challenge: bytes, details: dict[str, Any]
) -> None:
    mech = OAuthBearerMechanism(oauth())
    await mech.prepare()
    mech.initial_response()
    assert mech.respond(challenge) == b"\x01"
    assert mech.error_details == details


async def test_oauthbearer_uses_authzid_and_escapes_it() -> None:
    mech = OAuthBearerMechanism(oauth(authzid="a=b,c"))
    await mech.prepare()
    assert mech.initial_response().startswith(b"n,a=a=3Db=2Cc,\x01auth=Bearer ")


async def test_oauthbearer_host_and_port_are_optional_attributes() -> None:
    mech = OAuthBearerMechanism(oauth())
    await mech.prepare()
    mech.host = "smtp.example.com"
    assert mech.initial_response() == (
        f"n,a=user@example.com,\x01host=smtp.example.com\x01auth=Bearer {TOKEN}\x01\x01".encode()
    )
    mech.host, mech.port = None, 587
    assert b"\x01port=587\x01auth=" in mech.initial_response()


@pytest.mark.parametrize(
    ("host", "port", "error"),
    [
        ("a\x01b", None, SMTPInputError),
        ("", None, SMTPInputError),
        (None, 0, SMTPInputError),
        (None, 70000, SMTPInputError),
        (None, True, TypeError),
        (None, "25", TypeError),
    ],
)
async def test_oauthbearer_host_and_port_are_checked(
    host: str | None, port: Any, error: type[Exception]
) -> None:
    mech = OAuthBearerMechanism(oauth(), host=host, port=port)
    await mech.prepare()
    with pytest.raises(error):
        mech.initial_response()


@pytest.mark.parametrize("cls", [XOAuth2Mechanism, OAuthBearerMechanism])
def test_oauth_needs_prepare_first(cls: type[Mechanism]) -> None:
    with pytest.raises(RuntimeError, match="prepare"):
        cls(oauth()).initial_response()


# --------------------------------------------------------------------------------------------
# The token cache


async def test_a_token_without_expiry_is_cached_until_refused() -> None:
    provider = Provider(TOKEN, OTHER_TOKEN)
    auth = oauth(provider)
    for _ in range(3):
        mech = XOAuth2Mechanism(auth)
        await mech.prepare()
        assert TOKEN.encode() in mech.initial_response()
    assert provider.calls == 1
    mech.failed()  # the session tells a refused mechanism
    mech = XOAuth2Mechanism(auth)
    await mech.prepare()
    assert OTHER_TOKEN.encode() in mech.initial_response()
    assert provider.calls == 2


async def test_a_token_that_expires_within_the_margin_is_refreshed() -> None:
    soon = OAuth2Token(TOKEN, expires_at=time.time() + TOKEN_REFRESH_MARGIN - 5)
    later = OAuth2Token(OTHER_TOKEN, expires_at=time.time() + 3600)
    provider = Provider(soon, later)
    auth = oauth(provider)
    first = OAuthBearerMechanism(auth)
    await first.prepare()
    assert TOKEN.encode() in first.initial_response()
    for _ in range(2):
        mech = OAuthBearerMechanism(auth)
        await mech.prepare()
        assert OTHER_TOKEN.encode() in mech.initial_response()
    assert provider.calls == 2


async def test_an_expired_token_is_refreshed() -> None:
    provider = Provider(OAuth2Token(TOKEN, expires_at=0.0), OAuth2Token(OTHER_TOKEN))
    auth = oauth(provider)
    await XOAuth2Mechanism(auth).prepare()
    mech = XOAuth2Mechanism(auth)
    await mech.prepare()
    assert OTHER_TOKEN.encode() in mech.initial_response()
    assert provider.calls == 2


async def test_a_failure_does_not_drop_a_token_another_session_refreshed() -> None:
    provider = Provider(TOKEN, OTHER_TOKEN)
    auth = oauth(provider)
    stale = XOAuth2Mechanism(auth)
    await stale.prepare()
    stale.failed()
    fresh = XOAuth2Mechanism(auth)
    await fresh.prepare()  # OTHER_TOKEN is cached now
    stale.failed()  # a late failure of the old token must not drop the new one
    again = XOAuth2Mechanism(auth)
    await again.prepare()
    assert OTHER_TOKEN.encode() in again.initial_response()
    assert provider.calls == 2


def test_prepare_needs_no_event_loop() -> None:
    provider = Provider(TOKEN)
    mech = OAuthBearerMechanism(oauth(provider))
    drive(mech.prepare())
    assert TOKEN.encode() in mech.initial_response()
    drive(PlainMechanism(Authentication("u", SECRET)).prepare())


async def test_provider_results_are_checked() -> None:
    with pytest.raises(TypeError, match="str or an OAuth2Token"):
        await XOAuth2Mechanism(oauth(Provider(cast(str, 42)))).prepare()
    with pytest.raises(SMTPInputError, match="bearer token") as info:
        await XOAuth2Mechanism(oauth(Provider("bad token\x01x"))).prepare()
    assert "bad token" not in str(info.value)


async def test_provider_errors_propagate() -> None:
    async def broken() -> str:
        raise LookupError("no refresh token")

    with pytest.raises(LookupError):
        await OAuthBearerMechanism(oauth(cast(Provider, broken))).prepare()


# --------------------------------------------------------------------------------------------
# Secrets in reprs


async def test_no_secret_in_any_mechanism_repr() -> None:
    password_auth = Authentication("user", SECRET, authzid="boss")
    token_auth = oauth(authzid="boss")
    for name, cls in MECHANISMS.items():
        auth = token_auth if name in ("XOAUTH2", "OAUTHBEARER") else password_auth
        mech = cls(auth)
        await mech.prepare()
        before = repr(mech)
        initial = mech.initial_response()
        if name == "SCRAM-SHA-256":
            assert initial is not None
            nonce = initial.split(b",r=")[1].decode()
            mech.respond(f"r={nonce}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode())
        elif initial is None:
            mech.respond(b"<1.2@x>" if name == "CRAM-MD5" else b"Password:")
        assert (
            repr(mech)
            == before
            == f"<{cls.__name__} for 'user{'@example.com' if auth is token_auth else ''}'>"
        )
        reprs_are_clean(mech, SECRET, TOKEN)
    reprs_are_clean(password_auth, SECRET)
    reprs_are_clean(token_auth, TOKEN)


# --------------------------------------------------------------------------------------------
# choose_mechanism


def test_preference_order() -> None:
    assert MECHANISM_PREFERENCE == (
        "OAUTHBEARER",
        "XOAUTH2",
        "SCRAM-SHA-256",
        "PLAIN",
        "LOGIN",
        "CRAM-MD5",
    )
    # Over TLS, CRAM-MD5 is never preferred to PLAIN or LOGIN.
    assert MECHANISM_PREFERENCE.index("CRAM-MD5") > MECHANISM_PREFERENCE.index("PLAIN")
    assert MECHANISM_PREFERENCE.index("CRAM-MD5") > MECHANISM_PREFERENCE.index("LOGIN")
    # Without TLS, the mechanisms that keep the password off the wire come first.
    assert PLAINTEXT_MECHANISM_PREFERENCE[:2] == ("SCRAM-SHA-256", "CRAM-MD5")
    assert set(MECHANISM_PREFERENCE) == set(PLAINTEXT_MECHANISM_PREFERENCE) == set(MECHANISMS)


ALL = {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"}


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (ALL, ScramSha256Mechanism),
        ({"PLAIN", "LOGIN", "CRAM-MD5"}, PlainMechanism),
        ({"CRAM-MD5", "LOGIN"}, LoginMechanism),
        ({"PLAIN", "LOGIN"}, PlainMechanism),
        ({"PLAIN"}, PlainMechanism),
        ({"CRAM-MD5", "XOAUTH2"}, CramMD5Mechanism),
        ({"XOAUTH2", "OAUTHBEARER"}, None),
        ({"GSSAPI", "NTLM"}, None),
        (set(), None),
    ],
)
def test_automatic_choice_with_a_password(offered: set[str], expected: type | None) -> None:
    auth = Authentication("user", SECRET)
    assert choose_mechanism(auth, frozenset(offered)) is expected
    assert choose_mechanism(auth, frozenset(offered), tls=True) is expected


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (ALL, OAuthBearerMechanism),
        ({"PLAIN", "XOAUTH2", "OAUTHBEARER"}, OAuthBearerMechanism),
        ({"PLAIN", "LOGIN", "XOAUTH2"}, XOAuth2Mechanism),
        ({"PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5"}, None),
    ],
)
def test_automatic_choice_with_a_token_provider(offered: set[str], expected: type | None) -> None:
    assert choose_mechanism(oauth(), frozenset(offered)) is expected


def test_automatic_choice_with_both_credentials() -> None:
    both = Authentication("user", SECRET, token_provider=Provider(TOKEN))
    assert choose_mechanism(both, frozenset(ALL)) is OAuthBearerMechanism
    assert choose_mechanism(both, frozenset({"PLAIN", "XOAUTH2"})) is XOAuth2Mechanism
    assert choose_mechanism(both, frozenset({"PLAIN", "LOGIN"})) is PlainMechanism
    assert usable_mechanisms(both) == MECHANISM_PREFERENCE
    assert usable_mechanisms(both, tls=False) == PLAINTEXT_MECHANISM_PREFERENCE


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (ALL, ScramSha256Mechanism),
        ({"PLAIN", "LOGIN", "CRAM-MD5"}, CramMD5Mechanism),
        ({"LOGIN", "PLAIN"}, PlainMechanism),
        ({"LOGIN"}, LoginMechanism),
    ],
)
def test_automatic_choice_without_tls(offered: set[str], expected: type) -> None:
    auth = Authentication("user", SECRET)
    assert choose_mechanism(auth, frozenset(offered), tls=False) is expected


def test_usable_mechanisms() -> None:
    assert usable_mechanisms(Authentication("u", SECRET)) == (
        "SCRAM-SHA-256",
        "PLAIN",
        "LOGIN",
        "CRAM-MD5",
    )
    assert usable_mechanisms(oauth()) == ("OAUTHBEARER", "XOAUTH2")
    assert usable_mechanisms(Authentication("u", SECRET, mechanism="login")) == ("LOGIN",)


@pytest.mark.parametrize(
    ("mechanism", "offered", "expected"),
    [
        ("LOGIN", {"PLAIN", "LOGIN"}, LoginMechanism),
        ("login", {"PLAIN", "LOGIN"}, LoginMechanism),
        ("PLAIN", {"PLAIN", "LOGIN"}, PlainMechanism),
        ("CRAM-MD5", ALL, CramMD5Mechanism),
        ("cram-md5", {"CRAM-MD5", "PLAIN"}, CramMD5Mechanism),
        ("SCRAM-SHA-256", ALL, ScramSha256Mechanism),
        ("XOAUTH2", ALL, XOAuth2Mechanism),
        ("OAUTHBEARER", ALL, OAuthBearerMechanism),
        ("LOGIN", {"PLAIN"}, None),
        ("PLAIN", set(), None),
        ("SCRAM-SHA-256", {"PLAIN", "LOGIN"}, None),
    ],
)
def test_explicit_choice(mechanism: str, offered: set[str], expected: type | None) -> None:
    auth = Authentication("user", SECRET, mechanism=mechanism, token_provider=Provider(TOKEN))
    assert choose_mechanism(auth, frozenset(offered)) is expected
    assert choose_mechanism(auth, frozenset(offered), tls=False) is expected


# --------------------------------------------------------------------------------------------
# A core ready for AUTH (to check the bytes on the wire)


def ready_core(transcript: Any = None) -> ClientCore:
    core = ClientCore(transcript=transcript)
    feed(core, b"220 mx.example.com ESMTP\r\n")
    core.ehlo(Domain.parse("client.example"))
    core.data_to_send()
    feed(core, b"250-mx.example.com\r\n250 AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256\r\n")
    assert core.state is State.READY
    return core


def feed(core: ClientCore, data: bytes) -> list[Any]:
    core.receive_data(data)
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return events
