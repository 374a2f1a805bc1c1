"""Shared fixtures."""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import pytest
import trio.testing

from trio_sendmail import Session
from trio_sendmail.testing import FakeSMTPServer

from .helpers import (
    VARIANTS,
    Certificates,
    ServerFactory,
    ServerVariant,
    SessionFactory,
    fake_session,
    loopback_clock,
    make_certificates,
    tls_server,
)

#: Postfix support (the ``postfix`` fixture), for tests/interop/ and tests/hardening/.
pytest_plugins = [
    "tests.postfix_plugin", "tests.proxies_plugin", "tests.postgres_plugin", "tests.dovecot_plugin"
]  # fmt: skip


@pytest.fixture(scope="session")
def certs() -> Certificates:
    """The one set of test certificates: good ones (``server_context``,
    ``client_context``, ``ca_pem``) and bad ones (see :class:`~tests.helpers.Certificates`)."""
    return make_certificates()


@pytest.fixture
def transcript(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="trio_sendmail")
    return caplog


@pytest.fixture(params=VARIANTS, ids=str)
def server_variant(request: pytest.FixtureRequest) -> ServerVariant:
    """Each of PIPELINING and CHUNKING on and off (ids ``pipe-chunk``, ``pipe-data``,
    ``lock-chunk``, ``lock-data``): a test that sends through a fake server takes this
    and configures its server with it (see :class:`~tests.helpers.ServerVariant`)."""
    variant: ServerVariant = request.param
    return variant


@pytest.fixture
def make_server(certs: Certificates, server_variant: ServerVariant) -> ServerFactory:
    """``make_server(**kwargs)``: a fake server with the tests' certificate and user,
    offering PIPELINING and CHUNKING as ``server_variant`` says, so that a test that
    takes this fixture runs against all four variants (see :func:`~tests.helpers.tls_server`)."""
    return partial(tls_server, certs, variant=server_variant)


@pytest.fixture
def connect(certs: Certificates) -> SessionFactory:
    """``async with connect(server, tls=..., **options) as session``: an
    ``open_session()`` over memory streams to *server*, trusting the tests'
    certificate, with the tests' EHLO name (see :func:`~tests.helpers.fake_session`)."""

    def open_to(server: FakeSMTPServer, **kwargs: Any) -> AbstractAsyncContextManager[Session]:
        return fake_session(server, certs, **kwargs)

    return open_to


@pytest.fixture(name="loopback_clock")
def loopback_clock_fixture() -> trio.testing.MockClock:
    """The clock of a test over real loopback sockets (:func:`~tests.helpers.loopback_clock`)."""
    return loopback_clock()
