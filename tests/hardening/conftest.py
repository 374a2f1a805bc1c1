"""Fixtures of the hardening suite."""

from __future__ import annotations

import pytest
import trio.testing

from .support import Certificates, make_certificates


@pytest.fixture(scope="session")
def certificates() -> Certificates:
    return make_certificates()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """An autojump clock for tests that talk over real loopback sockets.

    The clock jumps to the next deadline once every task has been blocked for a
    millisecond of real time, not at once: a loopback segment is normally in the
    peer's receive queue before ``send`` returns, but a busy machine may defer that
    to a kernel thread, and an instant jump would then fire a timeout early.
    """
    return trio.testing.MockClock(autojump_threshold=0.001)
