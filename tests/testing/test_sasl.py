"""The fake server's AUTH (``trio_sendmail/testing/_sasl.py``): PLAIN, LOGIN,
CRAM-MD5, XOAUTH2, OAUTHBEARER and SCRAM-SHA-256, from the server's side."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any

import pytest

from trio_sendmail.testing import (
    FakeSMTPServer,
    TestCertificates,
)

from .raw_client import (
    PASSWORD,
    PLAIN_OK,
    USERS,
    RawClient,
    Reply,
    assert_no_secret,
    b64,
    connected,
)

# --- AUTH ---------------------------------------------------------------------------------------


async def test_auth_plain_initial_response(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        reply = await client.cmd(f"AUTH PLAIN {PLAIN_OK}")
        assert reply == Reply(235, ("2.7.0 Authentication successful",))
        assert (await client.cmd(f"AUTH PLAIN {PLAIN_OK}")).code == 503
        assert (await client.send_message("a@b.test", ["c@d.test"], b".\r\n")).code == 250
    assert auth_server.messages[0].authenticated_as == "alice"
    assert ("C", b"AUTH PLAIN <redacted>") in auth_server.transcript
    assert_no_secret(auth_server)


async def test_auth_plain_empty_challenge(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        assert await client.cmd("AUTH PLAIN") == Reply(334, ("",))
        assert (await client.cmd(b64(f"alice\0alice\0{PASSWORD}"))).code == 235
    assert auth_server.transcript[-4:-1] == [
        ("C", b"AUTH PLAIN"),
        ("S", b"334 "),
        ("C", b"<redacted>"),
    ]
    assert_no_secret(auth_server)


@pytest.mark.parametrize(
    "response",
    ["\0alice\0wrong", f"\0bob\0{PASSWORD}", f"mallory\0alice\0{PASSWORD}", "garbage"],
)
async def test_auth_plain_wrong_credentials(auth_server: FakeSMTPServer, response: str) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        reply = await client.cmd(f"AUTH PLAIN {b64(response)}")
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))
        # A failed AUTH may be retried.
        assert (await client.cmd(f"AUTH PLAIN {PLAIN_OK}")).code == 235


async def test_auth_login(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        assert await client.cmd("AUTH LOGIN") == Reply(334, (b64("Username:"),))
        assert await client.cmd(b64("alice")) == Reply(334, (b64("Password:"),))
        assert (await client.cmd(b64(PASSWORD))).code == 235
    assert auth_server.transcript.count(("C", b"<redacted>")) == 2
    assert_no_secret(auth_server)


async def test_auth_login_initial_response_and_custom_prompts() -> None:
    server = FakeSMTPServer(
        users=USERS, auth_requires_tls=False, login_prompts=(b"User\0", b"Pass\0")
    )
    async with connected(server) as client:
        await client.ehlo()
        assert await client.cmd(f"AUTH LOGIN {b64('alice')}") == Reply(334, (b64("Pass\0"),))
        assert (await client.cmd(b64("nope"))).code == 535
        assert (await client.cmd("auth login")).code == 334
        assert (await client.cmd(b64("alice"))).code == 334
        assert (await client.cmd(b64(PASSWORD))).code == 235
    assert ("C", b"AUTH LOGIN <redacted>") in server.transcript
    assert_no_secret(server)


async def test_auth_cancel_and_bad_base64(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert await client.cmd("*") == Reply(501, ("5.7.0 Authentication cancelled",))
        assert (await client.cmd("AUTH PLAIN")).code == 334
        assert await client.cmd("not base64!") == Reply(501, ("5.5.2 Invalid base64 data",))
        assert (await client.cmd("AUTH PLAIN AAA=BBB=")).code == 501
        assert (await client.cmd("AUTH PLAIN =AAA")).code == 501
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert (await client.cmd(b64("alice"))).code == 334
        assert (await client.cmd("=")).code == 501
        assert (await client.cmd("AUTH CRAM-MD5")) == Reply(
            504, ("5.5.4 Unrecognized authentication type",)
        )
        assert (await client.cmd("AUTH")).code == 501
        # Nothing was authenticated: the session still works.
        assert (await client.cmd("NOOP")).code == 250


async def test_auth_line_limits_and_odd_lines(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        assert (await client.cmd("AUTH PLAIN")).code == 334
        assert await client.cmd("A" * 13000) == Reply(
            500, ("5.5.6 Authentication exchange line is too long",)
        )
        assert (await client.cmd("AUTH PLAIN")).code == 334
        await client.send(b"abcd\n")
        assert (await client.reply()).code == 500
        # A long but legal response line is fine (RFC 4954 allows up to 12288 octets).
        assert (await client.cmd("AUTH PLAIN")).code == 334
        assert (await client.cmd(b64(b"\0alice\0" + b"x" * 6000))).code == 535
        assert (await client.cmd("AUTH PLAIN " + b64(b"\xff\0alice\0x"))).code == 535
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert (await client.cmd(b64(b"\xff"))).code == 334
        assert (await client.cmd(b64(PASSWORD))).code == 535
        assert (await client.cmd(f"AUTH PLAIN\t{PLAIN_OK}")).code == 500
    assert ("C", b"AUTH <redacted>") in auth_server.transcript
    assert_no_secret(auth_server)


async def test_auth_and_starttls_need_ehlo_not_helo(certs: TestCertificates) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS, auth_requires_tls=False)
    async with connected(server) as client:
        assert (await client.cmd("HELO")).code == 501
        assert (await client.cmd("HELO client.example.test")).code == 250
        assert (await client.cmd("STARTTLS")) == Reply(503, ("5.5.1 Send EHLO first",))
        assert (await client.cmd(f"AUTH PLAIN {PLAIN_OK}")).code == 503


async def test_auth_state_rules() -> None:
    server = FakeSMTPServer(users=USERS, auth_requires_tls=False, require_auth=True)
    async with connected(server) as client:
        assert (await client.cmd("AUTH PLAIN")).code == 503  # before EHLO
        await client.ehlo()
        assert await client.cmd("MAIL FROM:<a@b.test>") == Reply(
            530, ("5.7.0 Authentication required",)
        )
        assert (await client.cmd(f"AUTH PLAIN {PLAIN_OK}")).code == 235
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("AUTH LOGIN")).code == 503
    no_users = FakeSMTPServer()
    async with connected(no_users) as client:
        await client.ehlo()
        assert (await client.cmd("AUTH PLAIN")).code == 502


async def test_auth_during_transaction_refused(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("AUTH PLAIN")).code == 503


# --- AUTH: CRAM-MD5, XOAUTH2, OAUTHBEARER, SCRAM-SHA-256 ----------------------------------------

TOKEN = "ya29.fake-Token_0123"


def sasl_server(*mechanisms: str, **kwargs: object) -> FakeSMTPServer:
    return FakeSMTPServer(
        users=USERS,
        tokens={TOKEN: "alice"},
        auth_requires_tls=False,
        auth_mechanisms=mechanisms,
        **kwargs,  # type: ignore[arg-type]
    )


def unb64(reply: Reply) -> bytes:
    assert reply.code == 334, reply
    return base64.b64decode(reply.lines[0], validate=True)


def cram_answer(user: str, password: str, challenge: bytes) -> str:
    return b64(f"{user} {hmac.digest(password.encode(), challenge, 'md5').hex()}")


async def test_auth_cram_md5() -> None:
    server = sasl_server("CRAM-MD5")
    async with connected(server) as client:
        assert "AUTH CRAM-MD5" in (await client.ehlo()).lines
        challenge = unb64(await client.cmd("AUTH CRAM-MD5"))
        assert re.fullmatch(rb"<\d+\.\d+@mail\.example\.test>", challenge)
        reply = await client.cmd(cram_answer("alice", PASSWORD, challenge))
        assert reply == Reply(235, ("2.7.0 Authentication successful",))
        assert (await client.send_message("a@b.test", ["c@d.test"], b".\r\n")).code == 250
    assert server.messages[0].authenticated_as == "alice"
    assert server.transcript.count(("C", b"<redacted>")) == 1
    assert_no_secret(server)


@pytest.mark.parametrize(
    "answer",
    [
        lambda c: cram_answer("alice", "wrong", c),
        lambda c: cram_answer("bob", PASSWORD, c),
        lambda c: cram_answer("alice", PASSWORD, c + b"x"),
        lambda c: b64(f"alice {hmac.digest(PASSWORD.encode(), c, 'md5').hex().upper()}"),
        lambda c: b64(f"alice{hmac.digest(PASSWORD.encode(), c, 'md5').hex()}"),
        lambda c: b64(b"\xff " + b"0" * 32),
        lambda c: "",
    ],
)
async def test_auth_cram_md5_wrong_answers(answer: Any) -> None:
    server = sasl_server("CRAM-MD5", "PLAIN")
    async with connected(server) as client:
        await client.ehlo()
        challenge = unb64(await client.cmd("AUTH CRAM-MD5"))
        reply = await client.cmd(answer(challenge))
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))
        # Each attempt gets a fresh challenge.
        assert unb64(await client.cmd("AUTH CRAM-MD5")) != challenge


async def test_auth_cram_md5_refuses_an_initial_response_and_is_off_by_default() -> None:
    async with connected(sasl_server("CRAM-MD5")) as client:
        await client.ehlo()
        reply = await client.cmd(f"AUTH CRAM-MD5 {b64('alice')}")
        assert reply == Reply(501, ("5.5.2 CRAM-MD5 does not allow an initial response",))
        assert (await client.cmd("AUTH PLAIN")).code == 504  # implemented, not advertised
    async with connected(FakeSMTPServer(users=USERS, auth_requires_tls=False)) as client:
        assert "AUTH PLAIN LOGIN" in (await client.ehlo()).lines
        for mechanism in ("CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"):
            assert (await client.cmd(f"AUTH {mechanism}")).code == 504


def xoauth2(user: str, token: str) -> str:
    return b64(f"user={user}\x01auth=Bearer {token}\x01\x01")


def oauthbearer(token: str, authz: str = "a=alice", pairs: str = "") -> str:
    return b64(f"n,{authz},\x01{pairs}auth=Bearer {token}\x01\x01")


async def test_auth_offered_with_tokens_only() -> None:
    server = FakeSMTPServer(
        tokens={TOKEN: "alice"}, auth_requires_tls=False, auth_mechanisms=["xoauth2"]
    )
    async with connected(server) as client:
        assert "AUTH XOAUTH2" in (await client.ehlo()).lines
        assert (await client.cmd(f"AUTH XOAUTH2 {xoauth2('alice', TOKEN)}")).code == 235
    assert TOKEN not in repr(server)


@pytest.mark.parametrize(
    "initial",
    [
        xoauth2("alice", TOKEN),
        oauthbearer(TOKEN),
        oauthbearer(TOKEN, authz=""),
        oauthbearer(TOKEN, pairs="host=mail.example.test\x01port=587\x01"),
        b64(f"y,,\x01auth=bearer {TOKEN}\x01\x01"),
    ],
)
async def test_auth_oauth_success(initial: str) -> None:
    server = sasl_server("XOAUTH2", "OAUTHBEARER")
    mechanism = "XOAUTH2" if base64.b64decode(initial).startswith(b"user=") else "OAUTHBEARER"
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd(f"AUTH {mechanism} {initial}")).code == 235
        assert (await client.send_message("a@b.test", ["c@d.test"], b".\r\n")).code == 250
    assert server.messages[0].authenticated_as == "alice"
    assert ("C", f"AUTH {mechanism} <redacted>".encode()) in server.transcript
    assert not any(TOKEN.encode() in line for _, line in server.transcript)


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_auth_oauth_without_initial_response(mechanism: str) -> None:
    message = xoauth2("alice", TOKEN) if mechanism == "XOAUTH2" else oauthbearer(TOKEN)
    async with connected(sasl_server("XOAUTH2", "OAUTHBEARER")) as client:
        await client.ehlo()
        assert await client.cmd(f"AUTH {mechanism}") == Reply(334, ("",))
        assert (await client.cmd(message)).code == 235


@pytest.mark.parametrize(
    ("mechanism", "initial", "dummy"),
    [
        ("XOAUTH2", xoauth2("alice", "ya29.unknown"), ""),
        ("XOAUTH2", xoauth2("bob", TOKEN), ""),  # somebody else's token
        ("OAUTHBEARER", oauthbearer("ya29.unknown"), b64("\x01")),
        ("OAUTHBEARER", oauthbearer(TOKEN, authz="a=bob"), b64("\x01")),
    ],
)
async def test_auth_oauth_error_challenge(mechanism: str, initial: str, dummy: str) -> None:
    server = sasl_server("XOAUTH2", "OAUTHBEARER")
    async with connected(server) as client:
        await client.ehlo()
        error = json.loads(unb64(await client.cmd(f"AUTH {mechanism} {initial}")))
        assert error == {"status": "invalid_token", "scope": "smtp", "schemes": "bearer"}
        reply = await client.cmd(dummy)
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))
        # A wrong dummy response is a protocol error.
        assert (await client.cmd(f"AUTH {mechanism} {initial}")).code == 334
        wrong = b64("\x01") if mechanism == "XOAUTH2" else ""
        assert await client.cmd(wrong) == Reply(
            501, ("5.5.2 Expected the dummy response to the error challenge",)
        )
        assert (await client.cmd(f"AUTH {mechanism} {initial}")).code == 334
        assert (await client.cmd("*")).code == 501
    assert server.messages == []


@pytest.mark.parametrize(
    ("mechanism", "message"),
    [
        ("XOAUTH2", f"user=alice\x01auth=Bearer {TOKEN}\x01"),
        ("XOAUTH2", f"auth=Bearer {TOKEN}\x01user=alice\x01\x01"),
        ("XOAUTH2", f"user=alice\x01auth=Basic {TOKEN}\x01\x01"),
        ("XOAUTH2", "user=alice\x01auth=Bearer \x01\x01"),
        ("XOAUTH2", b"user=\xff\x01auth=Bearer x\x01\x01"),
        ("OAUTHBEARER", f"p=tls-unique,a=alice,\x01auth=Bearer {TOKEN}\x01\x01"),
        ("OAUTHBEARER", f"n,alice,\x01auth=Bearer {TOKEN}\x01\x01"),
        ("OAUTHBEARER", f"n,a=al=ice,\x01auth=Bearer {TOKEN}\x01\x01"),
        ("OAUTHBEARER", f"n,a=alice,auth=Bearer {TOKEN}\x01\x01"),
        ("OAUTHBEARER", f"n,a=alice,\x01auth=Bearer {TOKEN}\x01"),
        ("OAUTHBEARER", "n,a=alice,\x01host=x\x01\x01"),
        ("OAUTHBEARER", f"n,a=alice,\x01auth=Bearer {TOKEN}\x01auth=Bearer x\x01\x01"),
        ("OAUTHBEARER", f"n,a=alice,\x01no-equals\x01auth=Bearer {TOKEN}\x01\x01"),
        ("OAUTHBEARER", "n,a=alice,\x01\x01"),
        ("OAUTHBEARER", "n,a=alice"),
        ("OAUTHBEARER", b"n,a=\xff,\x01\x01"),
    ],
)
async def test_auth_oauth_malformed(mechanism: str, message: str | bytes) -> None:
    server = sasl_server("XOAUTH2", "OAUTHBEARER")
    async with connected(server) as client:
        await client.ehlo()
        reply = await client.cmd(f"AUTH {mechanism} {b64(message)}")
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))


# SCRAM-SHA-256, computed here from RFC 5802 §3 independently of the client library.


def scram_client_final(
    password: str, client_first_bare: str, server_first: str, gs2: str = "n,,"
) -> tuple[str, bytes]:
    """-> (client-final message, the expected server signature)."""
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c={b64(gs2)},r={fields['r']}"
    message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"{without_proof},p={b64(proof)}", hmac.digest(server_key, message, "sha256")


async def scram_exchange(
    client: RawClient,
    password: str = PASSWORD,
    user: str = "alice",
    gs2: str = "n,,",
    initial: bool = True,
) -> tuple[Reply, bytes]:
    bare = f"n={user},r=cl1ent-N0nce"
    if initial:
        reply = await client.cmd(f"AUTH SCRAM-SHA-256 {b64(gs2 + bare)}")
    else:
        assert await client.cmd("AUTH SCRAM-SHA-256") == Reply(334, ("",))
        reply = await client.cmd(b64(gs2 + bare))
    server_first = unb64(reply).decode()
    assert re.fullmatch(r"r=cl1ent-N0nce[!-+\--~]+,s=[A-Za-z0-9+/]+=*,i=\d+", server_first)
    final, signature = scram_client_final(password, bare, server_first, gs2)
    return await client.cmd(b64(final)), signature


@pytest.mark.parametrize("initial", [True, False])
async def test_auth_scram_sha_256(initial: bool) -> None:
    server = sasl_server("SCRAM-SHA-256")
    async with connected(server) as client:
        await client.ehlo()
        reply, signature = await scram_exchange(client, initial=initial)
        assert unb64(reply) == b"v=" + base64.b64encode(signature)
        assert await client.cmd("") == Reply(235, ("2.7.0 Authentication successful",))
        assert (await client.send_message("a@b.test", ["c@d.test"], b".\r\n")).code == 250
    assert server.messages[0].authenticated_as == "alice"
    # The server signature is a proof derived from the password: redacted.
    assert ("S", b"334 <redacted>") in server.transcript
    assert not any(base64.b64encode(signature) in line for _, line in server.transcript)
    assert_no_secret(server)


async def test_auth_scram_salt_and_iterations() -> None:
    server = sasl_server("SCRAM-SHA-256", scram_iterations=5000)
    async with connected(server) as client:
        await client.ehlo()
        salts = []
        for _ in range(2):
            first = unb64(await client.cmd(f"AUTH SCRAM-SHA-256 {b64('n,,n=alice,r=abc')}"))
            fields = dict(item.split(b"=", 1) for item in first.split(b","))
            assert fields[b"i"] == b"5000"
            assert len(base64.b64decode(fields[b"s"])) == 16
            salts.append(fields[b"s"])
            assert (await client.cmd("*")).code == 501
        assert salts[0] != salts[1]
    with pytest.raises(ValueError, match="scram_iterations"):
        FakeSMTPServer(scram_iterations=0)


async def test_auth_scram_bad_server_signature_option() -> None:
    server = sasl_server("SCRAM-SHA-256", scram_bad_server_signature=True)
    async with connected(server) as client:
        await client.ehlo()
        reply, signature = await scram_exchange(client)
        received = unb64(reply)
        assert received.startswith(b"v=") and received != b"v=" + base64.b64encode(signature)
        assert (await client.cmd("")).code == 235  # the server claims success all the same


@pytest.mark.parametrize(
    ("password", "user", "gs2"),
    [
        ("wrong password", "alice", "n,,"),
        (PASSWORD, "bob", "n,,"),  # unknown user: same steps, then 535
        (PASSWORD, "alice", "n,a=bob,"),
        (PASSWORD, "alice", "y,,"),  # the c= attribute will not match what was sent
    ],
)
async def test_auth_scram_failures(password: str, user: str, gs2: str) -> None:
    server = sasl_server("SCRAM-SHA-256")
    async with connected(server) as client:
        await client.ehlo()
        bare = f"n={user},r=nonce"
        reply = await client.cmd(f"AUTH SCRAM-SHA-256 {b64(gs2 + bare)}")
        if gs2 == "n,a=bob,":
            assert reply.code == 535
            return
        final, _ = scram_client_final(password, bare, unb64(reply).decode())
        reply = await client.cmd(b64(final))
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))


async def test_auth_scram_authzid_and_escaped_names() -> None:
    server = FakeSMTPServer(
        users={"a,b=c": PASSWORD}, auth_requires_tls=False, auth_mechanisms=["SCRAM-SHA-256"]
    )
    async with connected(server) as client:
        await client.ehlo()
        gs2 = "n,a=a=2Cb=3Dc,"
        reply, _ = await scram_exchange(client, user="a=2Cb=3Dc", gs2=gs2)
        assert unb64(reply).startswith(b"v=")
        assert (await client.cmd("")).code == 235
        assert (await client.send_message("a@b.test", ["c@d.test"], b".\r\n")).code == 250
    assert server.messages[0].authenticated_as == "a,b=c"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda final: final.replace("r=", "r=x", 1),  # a different nonce
        lambda final: final.replace("c=biws", "c=eSws"),  # a different GS2 header
        lambda final: final.replace("c=biws", "c=!!!!"),
        lambda final: final.rpartition(",p=")[0],  # no proof
        lambda final: final[:-4] + "AAA=",  # a short/other proof
        lambda final: final.rpartition(",p=")[0] + ",p=" + b64(bytes(32)),
        lambda final: "c=biws",
    ],
)
async def test_auth_scram_bad_client_final(tamper: Any) -> None:
    server = sasl_server("SCRAM-SHA-256")
    async with connected(server) as client:
        await client.ehlo()
        bare = "n=alice,r=nonce"
        first = unb64(await client.cmd(f"AUTH SCRAM-SHA-256 {b64('n,,' + bare)}")).decode()
        final, _ = scram_client_final(PASSWORD, bare, first)
        reply = await client.cmd(b64(tamper(final)))
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))


@pytest.mark.parametrize(
    "first",
    [
        "p=tls-unique,,n=alice,r=abc",
        "n,,m=ext,n=alice,r=abc",
        "n,,n=alice",
        "n,,n=al=ice,r=abc",
        "n,,n=alice,r=a\x7fb",
        "n,,r=abc,n=alice",
        "n,alice,n=alice,r=abc",
        "n",
        b"n,,n=\xff,r=abc",
    ],
)
async def test_auth_scram_bad_client_first(first: str | bytes) -> None:
    async with connected(sasl_server("SCRAM-SHA-256")) as client:
        await client.ehlo()
        reply = await client.cmd(f"AUTH SCRAM-SHA-256 {b64(first)}")
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))


async def test_auth_scram_response_to_the_server_final_message_must_be_empty() -> None:
    async with connected(sasl_server("SCRAM-SHA-256")) as client:
        await client.ehlo()
        reply, _ = await scram_exchange(client)
        assert reply.code == 334
        assert (await client.cmd(b64("v=junk"))).code == 535
        assert (await client.cmd("NOOP")).code == 250
