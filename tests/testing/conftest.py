"""Fixtures of the tests of ``trio_sendmail.testing``."""

from __future__ import annotations

import pytest

from trio_sendmail.testing import FakeSMTPServer, TestCertificates

from .raw_client import USERS


@pytest.fixture
def tls_server(certs: TestCertificates) -> FakeSMTPServer:
    return FakeSMTPServer(ssl_context=certs.server_context, users=USERS)


@pytest.fixture
def auth_server() -> FakeSMTPServer:
    return FakeSMTPServer(users=USERS, auth_requires_tls=False)
