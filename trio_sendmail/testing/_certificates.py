"""Throw-away TLS certificates for tests of the fake server, issued with trustme."""

from __future__ import annotations

import ssl
from typing import ClassVar

import attrs

from ._server import DEFAULT_HOSTNAME

__all__ = ["TestCertificates", "make_test_certificates"]


@attrs.frozen
class TestCertificates:
    """Throw-away TLS certificates for a test, from :func:`make_test_certificates`.

    Attributes:
        server_context: A server-side context presenting a leaf certificate valid for the
            requested host names; pass it as ``FakeSMTPServer(ssl_context=...)``.
        client_context: A client-side context (hostname checks and verification on) that trusts
            only the throw-away CA, not the system store.
        ca_pem: The throw-away CA certificate in PEM form.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class, despite the name

    server_context: ssl.SSLContext
    client_context: ssl.SSLContext
    ca_pem: bytes


def make_test_certificates(*hostnames: str) -> TestCertificates:
    """Issue a throw-away CA and a server certificate with trustme.

    Args:
        *hostnames: The names (DNS names or IP addresses) the server certificate is valid for.
            Defaults to ``"mail.example.test"``, ``"localhost"``, ``"127.0.0.1"`` and ``"::1"``.

    Returns:
        The server and client contexts and the CA certificate.

    Raises:
        ModuleNotFoundError: trustme is not installed (install ``trio_sendmail[testing]``).
    """
    import trustme  # optional dependency (trio_sendmail[testing]): imported only here

    if not hostnames:
        hostnames = (DEFAULT_HOSTNAME, "localhost", "127.0.0.1", "::1")
    ca = trustme.CA()
    leaf = ca.issue_cert(*hostnames)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(server_context)
    ca_pem: bytes = ca.cert_pem.bytes()
    # With cadata given, create_default_context() does not load the system's CA store.
    client_context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    return TestCertificates(
        server_context=server_context, client_context=client_context, ca_pem=ca_pem
    )
