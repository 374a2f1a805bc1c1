"""The README's demo: send two mails through an embedded loopback server.

A throw-away CA issues the server's certificate; the fake server from
:mod:`trio_sendmail.testing` listens on 127.0.0.1 twice (implicit TLS and
STARTTLS). One mail goes with :func:`sendmail` (implicit TLS + AUTH PLAIN), one
with :func:`sendmail_with_starttls` (STARTTLS + AUTH LOGIN), each streamed
through a trio memory channel. The redacted transcript and the bytes the server
received are printed.
"""

from __future__ import annotations

import email.message
import logging
import sys
from collections.abc import Callable

import trio

from ._api import sendmail, sendmail_with_starttls
from ._sasl import Authentication

__all__ = ["run_demo"]

DEMO_USER = "demo@example.test"
DEMO_PASSWORD = "correct horse battery staple"  # noqa: S105 (a throw-away demo secret)


class _PrintHandler(logging.Handler):
    def __init__(self, write: Callable[[str], object]) -> None:
        super().__init__(logging.DEBUG)
        self._write = write

    def emit(self, record: logging.LogRecord) -> None:
        self._write("    " + record.getMessage() + "\n")


def _message(subject: str) -> email.message.EmailMessage:
    message = email.message.EmailMessage()
    message["From"] = "Demo Sender <demo@example.test>"
    message["To"] = "Someone <someone@example.test>"
    message["Subject"] = subject
    message.set_content(
        "Hello from trio_sendmail!\n"
        ".This line starts with a dot: it is stuffed on the wire.\n"
        "Grüße — this body is 8-bit, so BODY=8BITMIME is declared.\n"
    )
    return message


async def _stream(
    message: email.message.EmailMessage, send: trio.MemorySendChannel[bytes]
) -> None:
    data = message.as_bytes()
    async with send:
        for start in range(0, len(data), 16):  # small chunks, split anywhere
            await send.send(data[start : start + 16])


async def run_demo(write: Callable[[str], object] | None = None) -> int:
    """Run the demo, writing to *write* (stdout by default); returns the number
    of messages delivered."""
    if write is None:
        write = sys.stdout.write
    from .testing import FakeSMTPServer, make_test_certificates, serve_fake_smtp

    certs = make_test_certificates("localhost", "127.0.0.1")
    server = FakeSMTPServer(
        hostname="localhost",
        ssl_context=certs.server_context,
        users={DEMO_USER: DEMO_PASSWORD},
    )
    handler = _PrintHandler(write)
    logger = logging.getLogger("trio_sendmail")
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        runs = (
            ("sendmail (implicit TLS, port 465 style)", True),
            ("sendmail_with_starttls (STARTTLS, port 587 style)", False),
        )
        for label, implicit in runs:
            async with serve_fake_smtp(server, implicit_tls=implicit) as port:
                write(f"\n=== {label}: 127.0.0.1:{port} ===\n")
                send, receive = trio.open_memory_channel[bytes](4)
                function = sendmail if implicit else sendmail_with_starttls
                mechanism = "PLAIN" if implicit else "LOGIN"
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_stream, _message(f"Demo via {function.__name__}"), send)
                    result = await function(
                        hostname="localhost",
                        port=port,
                        sender="demo@example.test",
                        recipients=["someone@example.test"],
                        mail=receive,
                        ssl_context=certs.client_context,
                        authentication=Authentication(
                            DEMO_USER, DEMO_PASSWORD, mechanism=mechanism
                        ),
                        domain="client.example.test",
                    )
                write(f"--- result: {result.reply}\n")
                received = server.messages[-1]
                write(
                    f"--- the server received (tls={received.tls}, "
                    f"authenticated_as={received.authenticated_as!r}, "
                    f"options={' '.join(received.mail_options)}):\n"
                )
                write(received.data.decode("utf-8", "replace").replace("\r\n", "\n"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    write(f"\n{len(server.messages)} messages delivered; the password appeared nowhere above.\n")
    return len(server.messages)
