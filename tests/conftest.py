"""Shared fixtures."""

from __future__ import annotations

import logging

import pytest

from trio_sendmail.testing import TestCertificates, make_test_certificates

from .helpers import VARIANTS, ServerVariant

#: Postfix support (the ``postfix`` fixture), for tests/interop/ and tests/hardening/.
pytest_plugins = ["tests.postfix_plugin"]


@pytest.fixture(scope="session")
def certs() -> TestCertificates:
    return make_test_certificates()


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
