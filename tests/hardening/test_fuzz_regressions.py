"""The reply-stream fuzz target (tests/fuzz/reply_target.py) in the fast suite.

Every input that ever crashed the fuzzer is kept in :data:`CRASHES` and replayed
here; so are the seeds, the corpus that the 10⁶-input run built, and a short run
of the random engine. The long,
coverage-guided run is ``python tests/fuzz/fuzz_reply.py --runs 1000000``.
"""

from __future__ import annotations

import pytest

from ..fuzz.fuzz_reply import random_inputs, run_random
from ..fuzz.reply_target import SEEDS, corpus, one_input, reference_parse

#: Inputs that crashed ``fuzz_reply.py`` (none so far: the 10⁶-input atheris run and the
#: random engine found no exception other than SMTPError and no broken invariant). Keep
#: each new crash here, with a comment naming the bug it found.
CRASHES: list[bytes] = []


@pytest.mark.parametrize("data", [*SEEDS, *CRASHES])
def test_seed_and_crash_inputs(data: bytes) -> None:
    one_input(data)


def test_the_fuzzers_corpus() -> None:
    """The 244 inputs that the 10⁶-input run kept for the coverage they reach."""
    inputs = corpus()
    assert len(inputs) > 200
    for data in inputs:
        one_input(data)


def test_a_short_random_run() -> None:
    assert run_random(1500, 1, one_input, SEEDS) == 1500


def test_the_random_engine_is_reproducible() -> None:
    assert list(random_inputs(50, 7, SEEDS)) == list(random_inputs(50, 7, SEEDS))


@pytest.mark.parametrize(
    ("stream", "limits", "replies", "rejected"),
    [
        (b"250 ok\r\n", (4096, 256, 65536), [(250, ("ok",), None)], False),
        (b"250-2.0.0 a\r\n250 2.0.0 b\r\n", (4096, 256, 65536), [(250, ("a", "b"), (2, 0, 0))],
         False),
        (b"250-a\r\n251 b\r\n", (4096, 256, 65536), [], True),
        (b"354\r\n", (4096, 256, 65536), [(354, ("",), None)], False),
        (b"25", (4096, 256, 65536), [], False),
        (b"2500", (4, 256, 65536), [], True),
        (b"250 a\r\n250 b\r\n250", (8, 1, 65536), [(250, ("a",), None), (250, ("b",), None)],
         False),
        (b"250-a\r\n250 b\r\n", (8, 1, 65536), [], True),
        (b"250 caf\xe9\r\n", (4096, 256, 65536), [], True),
    ],
)  # fmt: skip
def test_the_reference_parser(
    stream: bytes, limits: tuple[int, int, int], replies: list[object], rejected: bool
) -> None:
    assert reference_parse(stream, limits) == (replies, rejected)
