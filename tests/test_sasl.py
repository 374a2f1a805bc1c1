"""Tests of the SASL mechanisms (RFC 4616 PLAIN, draft-murchison-sasl-login LOGIN)."""

from __future__ import annotations

import base64
from typing import Any, cast

import pytest

from trio_sendmail._errors import SMTPInputError
from trio_sendmail._sasl import (
    MECHANISM_PREFERENCE,
    Authentication,
    LoginMechanism,
    PlainMechanism,
    choose_mechanism,
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


@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "XOAUTH2", "", "PLAIN "])
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
# choose_mechanism


def test_preference_order() -> None:
    assert MECHANISM_PREFERENCE == ("PLAIN", "LOGIN")


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ({"PLAIN", "LOGIN"}, PlainMechanism),
        ({"LOGIN", "CRAM-MD5"}, LoginMechanism),
        ({"PLAIN"}, PlainMechanism),
        ({"CRAM-MD5", "XOAUTH2"}, None),
        (set(), None),
    ],
)
def test_automatic_choice(offered: set[str], expected: type | None) -> None:
    auth = Authentication("user", SECRET)
    assert choose_mechanism(auth, frozenset(offered)) is expected


@pytest.mark.parametrize(
    ("mechanism", "offered", "expected"),
    [
        ("LOGIN", {"PLAIN", "LOGIN"}, LoginMechanism),
        ("login", {"PLAIN", "LOGIN"}, LoginMechanism),
        ("PLAIN", {"PLAIN", "LOGIN"}, PlainMechanism),
        ("LOGIN", {"PLAIN"}, None),
        ("PLAIN", set(), None),
    ],
)
def test_explicit_choice(mechanism: str, offered: set[str], expected: type | None) -> None:
    auth = Authentication("user", SECRET, mechanism=mechanism)
    assert choose_mechanism(auth, frozenset(offered)) is expected
