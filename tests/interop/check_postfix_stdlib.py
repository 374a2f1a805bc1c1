#!/usr/bin/env python3
"""Prove that the Postfix started by tests/interop/postfix.sh behaves as documented.

Uses only the standard library (smtplib/ssl/socket), not trio_sendmail, so the
harness can be trusted independently of the library under test.  Run it after
`tests/interop/postfix.sh start`:

    python3 tests/interop/check_postfix_stdlib.py [--big]

It reads the instance's settings from $POSTFIX_ENV_JSON, else
$POSTFIX_STATE/env.json, else ${TMPDIR:-/tmp}/trio_sendmail_postfix/env.json.
Each check prints PASS/FAIL; the last line is "N passed, N failed".  --big also
sends a 30 MB message.
"""

from __future__ import annotations

import base64
import json
import os
import random
import smtplib
import socket
import ssl
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLIENT_NAME = "client.example.test"  # never let smtplib call socket.getfqdn()
PREPENDED = (b"return-path", b"delivered-to", b"received")


def env_json_path() -> Path:
    if os.environ.get("POSTFIX_ENV_JSON"):
        return Path(os.environ["POSTFIX_ENV_JSON"])
    state = os.environ.get("POSTFIX_STATE") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "trio_sendmail_postfix"
    )
    return Path(state) / "env.json"


ENV: dict[str, Any] = json.loads(env_json_path().read_text(encoding="utf-8"))
HOST = str(ENV["host"])
HOST6 = str(ENV["host6"])
DOMAIN = str(ENV["domain"])
PLAIN = int(ENV["plain_port"])
SUBMISSION = int(ENV["submission_port"])
SMTPS = int(ENV["smtps_port"])
SIZE_LIMIT = int(ENV["size_limit"])
USER = str(ENV["user"])
PASSWORD = str(ENV["password"])
MAILDIRS = Path(str(ENV["maildir_base"]))


class CheckFailed(AssertionError):
    pass


def expect(cond: object, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def expect_reply(reply: tuple[int, bytes], code: int, enhanced: str | None = None) -> None:
    got, text = reply
    expect(got == code, f"expected {code}, got {got} {text!r}")
    if enhanced is not None:
        expect(text.startswith(enhanced.encode()), f"expected {enhanced} in {text!r}")


def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ENV["ca_file"]))


def unique_local(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------ connections --


def plain() -> smtplib.SMTP:
    s = smtplib.SMTP(HOST, PLAIN, local_hostname=CLIENT_NAME, timeout=30)
    s.ehlo()
    return s


def submission(login: bool = True) -> smtplib.SMTP:
    s = smtplib.SMTP(HOST, SUBMISSION, local_hostname=CLIENT_NAME, timeout=30)
    s.ehlo()
    s.starttls(context=tls_context())
    s.ehlo()
    if login:
        s.login(USER, PASSWORD)
    return s


def smtps(login: bool = True) -> smtplib.SMTP_SSL:
    s = smtplib.SMTP_SSL(
        HOST, SMTPS, local_hostname=CLIENT_NAME, context=tls_context(), timeout=30
    )
    s.ehlo()
    if login:
        s.login(USER, PASSWORD)
    return s


def raw_cmd(s: smtplib.SMTP, line: str | bytes) -> tuple[int, bytes]:
    """Send one command line verbatim (UTF-8), bypassing smtplib's checks."""
    data = line.encode("utf-8") if isinstance(line, str) else line
    s.send(data + b"\r\n")
    return s.getreply()


def bdat(s: smtplib.SMTP, chunks: list[bytes]) -> tuple[int, bytes]:
    reply: tuple[int, bytes] = (0, b"")
    for i, chunk in enumerate(chunks):
        last = b" LAST" if i == len(chunks) - 1 else b""
        s.send(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
        reply = s.getreply()
        if reply[0] != 250:
            break
    return reply


# ---------------------------------------------------------------- maildir --


def maildir_files(local: str) -> set[Path]:
    new = MAILDIRS / local / "new"
    return set(new.iterdir()) if new.is_dir() else set()


def wait_delivery(local: str, before: set[Path], timeout: float = 15.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = maildir_files(local) - before
        if fresh:
            expect(len(fresh) == 1, f"expected one new message for {local}, got {len(fresh)}")
            return fresh.pop().read_bytes()
        time.sleep(0.05)
    raise CheckFailed(f"nothing delivered to {MAILDIRS / local / 'new'} within {timeout}s")


def split_prepended(delivered: bytes) -> tuple[list[bytes], bytes]:
    """Split off the header fields Postfix put in front of the message.

    Returns (names of the prepended fields, rest).  The rest is the message as
    submitted, with CRLF turned into LF.
    """
    names: list[bytes] = []
    pos = 0
    while True:
        end = delivered.index(b"\n", pos)
        line = delivered[pos:end]
        name = line.split(b":", 1)[0].lower()
        if line[:1] in (b" ", b"\t") and names:
            pos = end + 1  # continuation of the previous prepended field
            continue
        if name not in PREPENDED:
            return names, delivered[pos:]
        names.append(name)
        pos = end + 1


def expect_delivered_exactly(delivered: bytes, sent: bytes) -> None:
    names, rest = split_prepended(delivered)
    expect(
        names[:3] == [b"return-path", b"delivered-to", b"received"],
        f"unexpected prepended fields {names}",
    )
    want = sent.replace(b"\r\n", b"\n")
    expect(rest == want, f"delivered body differs: {rest[:200]!r}... vs {want[:200]!r}...")


def message(local: str, subject: str, body: bytes) -> bytes:
    return (
        f"From: Sender <sender@{DOMAIN}>\r\nTo: <{local}@{DOMAIN}>\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@{DOMAIN}>\r\n\r\n"
    ).encode() + body


# ----------------------------------------------------------------- checks --


def check_listeners_loopback_only() -> None:
    ports = {PLAIN, SUBMISSION, SMTPS}
    seen: dict[int, set[str]] = {p: set() for p in ports}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            addr, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) not in ports:
                continue
            if v6:
                raw = bytes.fromhex(addr)
                # /proc prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                ip = socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1])
            seen[int(port_hex, 16)].add(ip)
    for port, ips in seen.items():
        expect(ips, f"nothing listens on port {port}")
        expect(ips <= {"127.0.0.1", "::1"}, f"port {port} listens on {ips}, not loopback only")


def check_plain_delivery_exact() -> None:
    local = "alice"
    body = (
        b"Plain port delivery.\r\n"
        b".a line that needed dot-stuffing\r\n"
        b"8-bit: caf\xc3\xa9, trailing spaces   \r\n"
        b"\r\n"
        b"last line\r\n"
    )
    msg = message(local, "plain delivery " + uuid.uuid4().hex, body)
    before = maildir_files(local)
    with plain() as s:
        expect(s.has_extn("pipelining") and s.has_extn("chunking"), "PIPELINING/CHUNKING missing")
        for ext in ("8bitmime", "smtputf8", "dsn", "enhancedstatuscodes", "size"):
            expect(s.has_extn(ext), f"{ext} not advertised on the plain port")
        expect(s.esmtp_features["size"] == str(SIZE_LIMIT), f"SIZE is {s.esmtp_features['size']}")
        refused = s.sendmail(f"sender@{DOMAIN}", [f"{local}@{DOMAIN}"], msg)
        expect(refused == {}, f"refused: {refused}")
    expect_delivered_exactly(wait_delivery(local, before), msg)


def check_plain_offers_no_auth_no_tls() -> None:
    with plain() as s:
        expect(not s.has_extn("auth"), "AUTH offered on the plain port")
        expect(not s.has_extn("starttls"), "STARTTLS offered on the plain port")
        code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0a\0b").decode())
        expect(code == 503, f"AUTH on plain port answered {code} {text!r}")


def check_submission_before_starttls() -> None:
    s = smtplib.SMTP(HOST, SUBMISSION, local_hostname=CLIENT_NAME, timeout=30)
    try:
        s.ehlo()
        expect(s.has_extn("starttls"), "STARTTLS not offered on submission")
        expect(not s.has_extn("auth"), "AUTH offered before STARTTLS")
        expect_reply(s.docmd("MAIL FROM:<sender@example.test>"), 530, "5.7.0")
    finally:
        s.close()


def _send_authenticated(conn: smtplib.SMTP, local: str, note: str) -> None:
    before = maildir_files(local)
    msg = message(local, note, f"{note}\r\n".encode())
    with conn as s:
        expect(s.sendmail(USER, [f"{local}@{DOMAIN}"], msg) == {}, "recipient refused")
    expect_delivered_exactly(wait_delivery(local, before), msg)


def check_submission_starttls_auth_plain() -> None:
    s = submission(login=False)
    expect(s.has_extn("auth"), "AUTH not offered after STARTTLS")
    mechs = set(s.esmtp_features["auth"].upper().split())
    expect(mechs == {"PLAIN", "LOGIN"}, f"AUTH mechanisms {mechs}")
    expect_reply(s.docmd("MAIL FROM:<sender@example.test>"), 530, "5.7.0")  # TLS but no AUTH
    s.user, s.password = USER, PASSWORD
    expect_reply(s.auth("PLAIN", s.auth_plain), 235, "2.7.0")
    _send_authenticated(s, "bob", "submission STARTTLS AUTH PLAIN")


def check_submission_starttls_auth_login() -> None:
    s = submission(login=False)
    s.user, s.password = USER, PASSWORD
    expect_reply(s.auth("LOGIN", s.auth_login), 235, "2.7.0")
    _send_authenticated(s, "bob", "submission STARTTLS AUTH LOGIN")


def check_smtps_auth() -> None:
    for mech in ("PLAIN", "LOGIN"):
        s = smtps(login=False)
        expect(s.has_extn("auth") and not s.has_extn("starttls"), "smtps EHLO features wrong")
        s.user, s.password = USER, PASSWORD
        auth = s.auth_plain if mech == "PLAIN" else s.auth_login
        expect_reply(s.auth(mech, auth), 235, "2.7.0")
        _send_authenticated(s, "carol", f"implicit TLS AUTH {mech}")


def check_utf8_credentials() -> None:
    user, password = str(ENV["utf8_user"]), str(ENV["utf8_password"])
    # smtplib only base64-encodes ASCII credentials, so build AUTH PLAIN by hand.
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
    with smtps(login=False) as s:
        expect_reply(s.docmd("AUTH", "PLAIN " + token), 235, "2.7.0")


def check_wrong_password() -> None:
    for port in (SUBMISSION, SMTPS):
        with submission(login=False) if port == SUBMISSION else smtps(login=False) as s:
            try:
                s.login(USER, PASSWORD + "-wrong")
            except smtplib.SMTPAuthenticationError as exc:
                code: Any = exc.args[0]  # typeshed calls the text str; it is bytes
                text: Any = exc.args[1]
                expect(code == 535, f"wrong password gave {code} {text!r}")
                expect(bytes(text).startswith(b"5.7.8"), f"text {text!r}")
            else:
                raise CheckFailed("wrong password accepted")
            # the session stays usable: the right password still works
            s.login(USER, PASSWORD)


def check_rcpt_refusal_patterns() -> None:
    with plain() as s:
        expect_reply(s.mail(f"sender@{DOMAIN}"), 250)
        expect_reply(s.rcpt(f"reject-{uuid.uuid4().hex[:6]}@{DOMAIN}"), 550, "5.1.1")
        expect_reply(s.rcpt(f"tempfail-{uuid.uuid4().hex[:6]}@{DOMAIN}"), 450, "4.2.0")
        expect_reply(s.rcpt("reject-x@elsewhere.test"), 550, "5.1.1")  # any domain
        expect_reply(s.rcpt("someone@elsewhere.test"), 550, "5.7.1")  # no relaying
        expect_reply(s.rcpt(f".dot@{DOMAIN}"), 550, "5.1.1")  # unusable Maildir name
        local = unique_local("mixed")
        before = maildir_files(local)
        expect_reply(s.rcpt(f"{local}@{DOMAIN}"), 250, "2.1.5")
        expect_reply(s.data(message(local, "mixed", b"one good recipient\r\n")), 250, "2.0.0")
    wait_delivery(local, before)
    with submission() as s:  # same patterns after AUTH
        expect_reply(s.mail(USER), 250)
        expect_reply(s.rcpt(f"reject-a@{DOMAIN}"), 550, "5.1.1")
        expect_reply(s.rcpt(f"tempfail-a@{DOMAIN}"), 450, "4.2.0")
        expect_reply(s.rcpt("someone@elsewhere.test"), 550, "5.7.1")


def check_mail_refusal_patterns() -> None:
    with plain() as s:
        expect_reply(s.mail(f"reject-x@{DOMAIN}"), 550, "5.7.1")
        expect_reply(s.mail(f"tempfail-x@{DOMAIN}"), 451, "4.3.0")
        expect_reply(s.mail(f"ok@{DOMAIN}"), 250)


def check_size_limit() -> None:
    with plain() as s:
        expect_reply(s.mail(f"sender@{DOMAIN}", [f"SIZE={SIZE_LIMIT + 1}"]), 552, "5.3.4")
        expect_reply(s.mail(f"sender@{DOMAIN}", [f"SIZE={SIZE_LIMIT}"]), 250)


def check_smtputf8_delivery() -> None:
    local = "jöran"
    body = "Grüße, jöran — UTF-8 body\r\n".encode()
    msg = (
        f"From: <sender@{DOMAIN}>\r\nTo: <{local}@{DOMAIN}>\r\n"
        f"Subject: héllo {uuid.uuid4().hex}\r\n\r\n"
    ).encode() + body
    with plain() as s:
        # Without SMTPUTF8 the UTF-8 address is refused (strict_smtputf8 = yes).
        expect_reply(raw_cmd(s, f"MAIL FROM:<sender@{DOMAIN}>"), 250)
        expect_reply(raw_cmd(s, f"RCPT TO:<{local}@{DOMAIN}>"), 553, "5.6.7")
        s.rset()
    before = maildir_files(local)
    with plain() as s:
        refused = s.sendmail(
            f"sender@{DOMAIN}", [f"{local}@{DOMAIN}"], msg, mail_options=["SMTPUTF8"]
        )
        expect(refused == {}, f"refused {refused}")
    delivered = wait_delivery(local, before)
    expect_delivered_exactly(delivered, msg)
    expect(f"Delivered-To: {local}@{DOMAIN}\n".encode() in delivered, "Delivered-To not UTF-8")


def check_header_check_refusals() -> None:
    for header, code, enhanced in (
        ("X-Trio-Test-Reject", 550, "5.7.1"),
        ("X-Trio-Test-Tempfail", 451, "4.7.1"),
    ):
        with plain() as s:
            expect_reply(s.mail(f"sender@{DOMAIN}"), 250)
            expect_reply(s.rcpt(f"nobody-gets-this@{DOMAIN}"), 250)
            expect_reply(s.data(f"{header}: yes\r\n\r\nbody\r\n".encode()), code, enhanced)
        with plain() as s:  # the same via BDAT: answered at the LAST chunk
            expect_reply(s.mail(f"sender@{DOMAIN}"), 250)
            expect_reply(s.rcpt(f"nobody-gets-this@{DOMAIN}"), 250)
            expect_reply(bdat(s, [f"{header}: yes\r\n".encode(), b"\r\nbody\r\n"]), code, enhanced)
    expect(not maildir_files("nobody-gets-this"), "a refused message was delivered")


def check_dsn_success_report() -> None:
    """NOTIFY=SUCCESS makes Postfix mail a delivery report to the sender's Maildir."""
    sender, rcpt = unique_local("dsn-sender"), unique_local("dsn-rcpt")
    envid = uuid.uuid4().hex
    before = maildir_files(sender)
    with submission() as s:
        refused = s.sendmail(
            f"{sender}@{DOMAIN}",
            [f"{rcpt}@{DOMAIN}"],
            message(rcpt, "dsn", b"dsn\r\n"),
            mail_options=["RET=HDRS", f"ENVID={envid}"],
            rcpt_options=["NOTIFY=SUCCESS"],
        )
        expect(refused == {}, f"refused {refused}")
    report = wait_delivery(sender, before)
    expect(b"report-type=delivery-status" in report, "not a DSN")
    expect(f"Original-Envelope-Id: {envid}".encode() in report, "ENVID missing")
    expect(b"Action: delivered" in report, "Action is not delivered")


def check_tls_verification() -> None:
    ctx = tls_context()
    for host, name in ((HOST, str(ENV["tls_hostname"])), (HOST, HOST)) + (
        ((HOST6, HOST6),) if HOST6 else ()
    ):
        with (
            socket.create_connection((host, SMTPS), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as tls,
        ):
            expect(tls.recv(100).startswith(b"220 "), "no greeting over TLS")
    with socket.create_connection((HOST, SMTPS), timeout=10) as raw:
        try:
            ctx.wrap_socket(raw, server_hostname="wrong.example.test")
        except ssl.SSLCertVerificationError as exc:
            expect("mismatch" in str(exc).lower() or "match" in str(exc), str(exc))
        else:
            raise CheckFailed("wrong hostname accepted")
    untrusting = ssl.create_default_context()  # system CAs only
    with socket.create_connection((HOST, SMTPS), timeout=10) as raw:
        try:
            untrusting.wrap_socket(raw, server_hostname="localhost")
        except ssl.SSLCertVerificationError:
            pass
        else:
            raise CheckFailed("certificate accepted without the test CA")


def check_ipv6() -> None:
    if not HOST6:
        print("    (no ::1 on this host; skipped)")
        return
    with smtplib.SMTP(HOST6, PLAIN, local_hostname=CLIENT_NAME, timeout=30) as s:
        expect_reply(s.ehlo(), 250)
    with smtplib.SMTP(HOST6, SUBMISSION, local_hostname=CLIENT_NAME, timeout=30) as s:
        s.ehlo()
        s.starttls(context=tls_context())  # verifies the IP SAN ::1
        s.ehlo()
        s.login(USER, PASSWORD)


def check_long_line_blob() -> None:
    """A 2 MiB body without any line break arrives byte for byte (plus one LF)."""
    rng = random.Random(2)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    blob = bytes(rng.choice(alphabet) for _ in range(2 << 20))
    head = message("blob", "2 MiB line", b"")
    for how in ("DATA", "BDAT"):
        local = unique_local("blob")
        before = maildir_files(local)
        with plain() as s:
            expect_reply(s.mail(f"sender@{DOMAIN}"), 250)
            expect_reply(s.rcpt(f"{local}@{DOMAIN}"), 250)
            if how == "DATA":
                # smtplib appends the CRLF that must precede the final "."
                expect_reply(s.data(head + blob), 250)
            else:
                expect_reply(bdat(s, [head + blob[:700_000], blob[700_000:]]), 250)
        _, rest = split_prepended(wait_delivery(local, before))
        expect(rest == head.replace(b"\r\n", b"\n") + blob + b"\n", f"{how}: blob changed")


def check_line_ending_quirks() -> None:
    """Record what Postfix does to odd line endings (see README)."""
    cases = [
        # (sent body, delivered body)
        (b"a\nb\r\n", b"a\nb\n"),  # bare LF ends a line (smtpd_forbid_bare_newline = no)
        (b"a\rb\r\n", b"a b\n"),  # bare CR becomes a space (cleanup_replace_stray_cr_lf)
    ]
    # Only BDAT can end a message without CRLF; Postfix still ends it with LF.
    bdat_only = [(b"no final newline", b"no final newline\n")]
    for how in ("DATA", "BDAT"):
        for sent, want in cases + (bdat_only if how == "BDAT" else []):
            local = unique_local("eol")
            before = maildir_files(local)
            head = b"Subject: eol\r\n\r\n"
            with plain() as s:
                expect_reply(s.mail(f"sender@{DOMAIN}"), 250)
                expect_reply(s.rcpt(f"{local}@{DOMAIN}"), 250)
                if how == "DATA":
                    expect_reply(s.data(head + sent), 250)  # bytes: smtplib leaves EOLs alone
                else:
                    expect_reply(bdat(s, [head + sent]), 250)
            _, rest = split_prepended(wait_delivery(local, before))
            expect(rest == b"Subject: eol\n\n" + want, f"{how} {sent!r} -> {rest!r}")


def check_big_message() -> None:
    local = unique_local("big")
    line = b"x" * 76 + b"\r\n"
    msg = message(local, "30 MB", line * (30_000_000 // len(line)))
    before = maildir_files(local)
    with plain() as s:
        refused = s.sendmail(f"sender@{DOMAIN}", [f"{local}@{DOMAIN}"], msg, [f"SIZE={len(msg)}"])
        expect(refused == {}, f"refused {refused}")
    expect_delivered_exactly(wait_delivery(local, before, timeout=60), msg)


CHECKS: list[Callable[[], None]] = [
    check_listeners_loopback_only,
    check_plain_delivery_exact,
    check_plain_offers_no_auth_no_tls,
    check_submission_before_starttls,
    check_submission_starttls_auth_plain,
    check_submission_starttls_auth_login,
    check_smtps_auth,
    check_utf8_credentials,
    check_wrong_password,
    check_rcpt_refusal_patterns,
    check_mail_refusal_patterns,
    check_size_limit,
    check_smtputf8_delivery,
    check_header_check_refusals,
    check_dsn_success_report,
    check_tls_verification,
    check_ipv6,
    check_long_line_blob,
    check_line_ending_quirks,
]


def main() -> int:
    checks = CHECKS + ([check_big_message] if "--big" in sys.argv[1:] else [])
    passed = failed = 0
    t_all = time.monotonic()
    for check in checks:
        t0 = time.monotonic()
        try:
            check()
        except Exception:
            failed += 1
            print(f"FAIL {check.__name__} ({time.monotonic() - t0:.2f}s)")
            traceback.print_exc(limit=3)
        else:
            passed += 1
            print(f"PASS {check.__name__} ({time.monotonic() - t0:.2f}s)")
    print(f"# {time.monotonic() - t_all:.1f}s against {env_json_path()}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
