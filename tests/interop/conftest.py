"""Fixtures of the Postfix interop suite (``postfix`` itself is in ``tests/postfix_plugin.py``)."""

from __future__ import annotations

import ssl

import pytest

from ..postfix_plugin import PostfixEnv


@pytest.fixture
def tls_context(postfix: PostfixEnv) -> ssl.SSLContext:
    """A client context trusting only the instance's throw-away CA."""
    return ssl.create_default_context(cafile=str(postfix.ca_file))
