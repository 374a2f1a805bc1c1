"""Shared fixtures."""

from __future__ import annotations

import logging

import pytest

from trio_sendmail.testing import TestCertificates, make_test_certificates


@pytest.fixture(scope="session")
def certs() -> TestCertificates:
    return make_test_certificates()


@pytest.fixture
def transcript(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="trio_sendmail")
    return caplog
