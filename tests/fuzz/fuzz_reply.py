#!/usr/bin/env python3
"""Coverage-guided fuzzing of the SMTP reply stream (ReplyParser, Capabilities, ClientCore).

With atheris (libFuzzer) installed::

    python tests/fuzz/fuzz_reply.py --runs 1000000 --with-corpus   # one million inputs
    python tests/fuzz/fuzz_reply.py --runs 20000                   # the short run for CI
    python tests/fuzz/fuzz_reply.py --runs 0 CORPUS_DIR            # forever; libFuzzer
                                                                   # arguments pass on

Without atheris (``--engine random``, the fallback when it cannot be imported),
a random generator mutating the seeds takes its place: it finds less, but it runs
anywhere. Both start from the seeds of ``reply_target.py``; ``--with-corpus`` adds
the corpus that the 10⁶-input run built (``corpus.b64``: deeper, but slower inputs,
so the short CI run leaves it out; the fast suite replays it anyway). The target and
its invariants are in ``reply_target.py``; every crash found is kept as a regression
test in ``tests/hardening/test_fuzz_regressions.py``.

The exit status is 0 when no input crashed. libFuzzer prints ``Done N runs in
S second(s)``; the random engine prints the same figures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any


def _load_target(atheris: Any) -> ModuleType:
    """Import the target; under atheris, with trio_sendmail's code instrumented."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    if "trio_sendmail" in sys.modules and atheris is not None:
        raise RuntimeError("trio_sendmail was imported before its code could be instrumented")
    instrumenting = (
        atheris.instrument_imports(include=["trio_sendmail"])
        if atheris is not None
        else contextlib.nullcontext()
    )
    with instrumenting:
        return importlib.import_module("reply_target")


def _mutate(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            del buf[min(pos, len(buf) - 1)]
        elif op == 1:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2:
            buf[pos:pos] = rng.choice(
                (b"\r\n", b"\n", b"-", b" ", b"250", b"334 ", b"421", b"2.0.0 ", b"\x00", b"AUTH")
            )
        elif op == 3 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 4:
            other = rng.choice(seeds)
            start = rng.randint(0, len(other))
            buf[pos:pos] = other[start : start + rng.randint(1, 40)]
        else:
            buf[pos:pos] = buf[pos : pos + rng.randint(1, 64)] * rng.randint(1, 4)
    return bytes(buf[:4096])


def random_inputs(runs: int, seed: int, seeds: Sequence[bytes]) -> Iterator[bytes]:
    """*runs* inputs: one in ten random bytes, the others mutated seeds."""
    rng = random.Random(seed)
    for i in range(runs):
        if i % 10 == 0:
            yield bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        else:
            yield _mutate(rng, rng.choice(seeds), seeds)


def run_random(
    runs: int, seed: int, target: Callable[[bytes], None], seeds: Sequence[bytes]
) -> int:
    """The fallback engine; returns how many inputs ran (it raises on the first crash)."""
    count = 0
    for data in random_inputs(runs, seed, seeds):
        try:
            target(data)
        except Exception:
            sys.stderr.write(f"crash on input {data!r}\n")
            raise
        count += 1
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz the SMTP reply stream.")
    parser.add_argument("--runs", type=int, default=20000, help="inputs to run (0: forever)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--with-corpus", action="store_true", help="also seed with corpus.b64")
    args, rest = parser.parse_known_args(argv)
    atheris: Any = None
    if args.engine in ("auto", "atheris"):
        try:
            atheris = importlib.import_module("atheris")
        except ImportError:
            if args.engine == "atheris":
                raise
    target = _load_target(atheris)
    seeds = [*target.SEEDS, *(target.corpus() if args.with_corpus else [])]
    if atheris is None:
        started = time.monotonic()
        count = run_random(args.runs or sys.maxsize, args.seed, target.one_input, seeds)
        print(f"Done {count} runs in {time.monotonic() - started:.0f} second(s) (random engine)")
        return 0
    libfuzzer = [sys.argv[0], f"-runs={args.runs if args.runs else -1}", *rest]
    if args.seed:
        libfuzzer.append(f"-seed={args.seed}")
    if all(arg.startswith("-") for arg in rest):
        # No corpus folder given: start from the seeds, in a scratch folder (libFuzzer
        # adds what it finds there).
        corpus = Path(tempfile.mkdtemp(prefix="fuzz_reply_corpus_"))
        for i, seed in enumerate(seeds):
            (corpus / f"seed{i}").write_bytes(seed)
        libfuzzer.append(str(corpus))
    atheris.Setup(libfuzzer, target.one_input)
    atheris.Fuzz()
    return 0  # pragma: no cover - atheris.Fuzz() exits the process


if __name__ == "__main__":
    sys.exit(main())
