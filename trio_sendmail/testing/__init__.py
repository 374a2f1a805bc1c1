"""A strict, in-process fake SMTP server for testing SMTP clients under trio.

This module is public API for *your* test suite: it lets you run a real (if tiny) submission
server inside a trio test, point a client at it, and then assert on what arrived, byte for byte.
It needs the optional dependency ``trustme`` only for :func:`make_test_certificates`
(install ``trio_sendmail[testing]``).

The server is deliberately independent of the client half of :mod:`trio_sendmail`: it shares no
parsing or encoding code with it, so it can catch the client's bugs instead of agreeing with them.
It is also *strict*: where a lenient MTA would silently repair a client's mistake (a bare LF, an
undeclared 8-bit body, plaintext pipelined behind ``STARTTLS``, a command sent before the
previous reply when that is not allowed), the fake server refuses it or counts it in an
attribute that tests can assert is zero.

Over memory streams (no sockets, no TLS needed)::

    import trio.testing
    from trio_sendmail.testing import FakeSMTPServer

    async def test_something():
        server = FakeSMTPServer()
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            ...  # talk SMTP over client_stream, then send QUIT or close it
        assert server.messages[0].recipients == ("bob@example.test",)
        assert server.bare_line_endings == 0

:func:`trio.testing.memory_stream_pair` buffers without limit, which is what you usually want;
:func:`trio.testing.lockstep_stream_pair` works too if you want every write to wait for the
matching read. Memory streams carry TLS as well: pass the ``server_context`` of
:func:`make_test_certificates` as *ssl_context* and wrap the client side in a client
:class:`trio.SSLStream`.

Over loopback TCP (when a real socket matters)::

    certs = make_test_certificates()
    server = FakeSMTPServer(ssl_context=certs.server_context, users={"alice": "s3cret"})
    async with serve_fake_smtp(server, implicit_tls=True) as port:
        ...  # connect to 127.0.0.1:port with certs.client_context
"""

# Layout
# ------
#
# The fake server is split by concern; each private module starts with its own theory of
# operation, citing the RFC sections it implements:
# - _server: FakeSMTPServer (configuration and the record of what happened), its listener on
#   loopback TCP, serve_fake_smtp();
# - _dialogue: the per-connection dialogue: replies, the command loop, the session commands
#   (EHLO, STARTTLS, AUTH framing, ...), pipelining checks;
# - _mail: the mail transaction (MAIL, RCPT, DATA, BDAT) and the ReceivedMessage it records;
# - _sasl: the server side of the SASL mechanisms;
# - _syntax: paths, mailboxes and ESMTP parameters;
# - _reader: the buffered line/data/octet reader under the dialogue;
# - _certificates: throw-away TLS certificates (trustme).
#
# The package imports nothing from the client half of trio_sendmail (tests/testing checks it):
# it shares no parsing or encoding code with the client, so it stays an independent oracle.

from ._certificates import TestCertificates, make_test_certificates
from ._mail import ReceivedMessage
from ._server import DEFAULT_EXTENSIONS, DEFAULT_HOSTNAME, FakeSMTPServer, serve_fake_smtp

__all__ = [
    "DEFAULT_EXTENSIONS",
    "DEFAULT_HOSTNAME",
    "FakeSMTPServer",
    "ReceivedMessage",
    "TestCertificates",
    "make_test_certificates",
    "serve_fake_smtp",
]
