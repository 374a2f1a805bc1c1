"""The README's demo and the default EHLO name."""

from __future__ import annotations

import socket
import threading

import pytest
import trio
import trio.testing

import trio_sendmail as ts
import trio_sendmail._opening as session_module
from trio_sendmail.__main__ import main
from trio_sendmail._demo import DEMO_PASSWORD, run_demo
from trio_sendmail.testing import FakeSMTPServer, serve_fake_smtp


async def test_demo_sends_two_mails_and_never_shows_the_password() -> None:
    out: list[str] = []
    assert await run_demo(out.append) == 2
    text = "".join(out)
    assert "C: AUTH PLAIN <redacted>" in text and "C: AUTH LOGIN" in text
    assert "C: STARTTLS" in text
    assert text.count("250 2.0.0 Ok: queued as") >= 2
    assert "..This line" not in text  # the received message, unstuffed
    assert ".This line starts with a dot" in text
    assert DEMO_PASSWORD not in text


def test_main_demo_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    assert "2 messages delivered" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--no-such-flag"])


@pytest.mark.parametrize(
    ("hostname", "fqdn", "expected"),
    [
        ("mail.example.org", "ignored", "mail.example.org"),
        ("box", "box.example.net", "box.example.net"),
        ("box", "box", "[127.0.0.1]"),
        ("box", "box.localdomain", "[127.0.0.1]"),
        ("bad_name.example", "box", "[127.0.0.1]"),
    ],
)
async def test_default_ehlo_name(
    monkeypatch: pytest.MonkeyPatch, hostname: str, fqdn: str, expected: str
) -> None:
    monkeypatch.setattr(session_module, "_default_name", None)
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    monkeypatch.setattr(socket, "getfqdn", lambda name="": fqdn)
    server = FakeSMTPServer()
    async with serve_fake_smtp(server) as port:
        for _ in range(2):  # the second time comes from the cache (or the socket)
            async with ts.open_session("127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT):
                pass
    helos = [line for _, line in server.transcript if line.startswith(b"EHLO")]
    assert helos == [b"EHLO " + expected.encode()] * 2


async def test_default_ehlo_name_lookup_that_hangs(
    monkeypatch: pytest.MonkeyPatch, loopback_clock: trio.testing.MockClock
) -> None:
    """A resolver that never answers: the session gives up on it after 2 s (on the
    test's clock, which jumps: no wall-clock bound) and greets with its address."""
    monkeypatch.setattr(session_module, "_default_name", None)
    monkeypatch.setattr(socket, "gethostname", lambda: "box")
    release = threading.Event()

    def stuck_fqdn(name: str = "") -> str:  # a resolver that hangs until the test ends
        release.wait(60)
        return "late.example.org"

    monkeypatch.setattr(socket, "getfqdn", stuck_fqdn)
    server = FakeSMTPServer()
    try:
        async with serve_fake_smtp(server) as port:
            start = trio.current_time()
            async with ts.open_session("127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT):
                pass
            assert trio.current_time() - start == pytest.approx(2, abs=0.5)
    finally:
        release.set()
    helos = [line for _, line in server.transcript if line.startswith(b"EHLO")]
    assert helos == [b"EHLO [127.0.0.1]"]
