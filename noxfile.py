"""Developer tasks: ``nox -s lint typecheck tests docs interop``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the tests."""
    session.install("-e", ".[typecheck]", "--config-settings", "editable_mode=compat")
    session.run("mypy")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite with coverage (Postfix tests skip unless Postfix runs)."""
    session.install("-e", ".[test]", "--config-settings", "editable_mode=compat")
    session.run(
        "pytest",
        "--cov=trio_sendmail",
        "--cov-report=term",
        "--cov-fail-under=90",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs with warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def interop(session: nox.Session) -> None:
    """Run the Postfix tests against a private Postfix on loopback.

    When ``POSTFIX_STATE`` names a running instance (CI starts one), it is used
    and left running. Otherwise this session starts one in a folder and on ports
    of its own, and stops it (and only it) at the end.
    """
    session.install("-e", ".[test]", "--config-settings", "editable_mode=compat")
    env = {"TRIO_SENDMAIL_REQUIRE_POSTFIX": "1"}
    state = os.environ.get("POSTFIX_STATE")
    running = bool(state) and (
        subprocess.run(
            ["bash", "tests/interop/postfix.sh", "status"],  # noqa: S607
            stdout=subprocess.DEVNULL,
            check=False,
        ).returncode
        == 0
    )
    if running:
        session.run("pytest", "-m", "postfix", "tests/interop", env=env)
        return
    folder = tempfile.mkdtemp(prefix="trio_sendmail_nox_")
    os.chmod(folder, 0o755)  # noqa: S103 - Postfix's own users walk into the folder
    plain, submission, sasl = _free_ports(3)
    env.update(
        # The other servers' tests skip: none runs in this session's folder (a
        # proxy or Dovecot of another run would not know this Postfix's ports).
        PROXIES_STATE=os.path.join(folder, "proxies"),
        DOVECOT_STATE=os.path.join(folder, "dovecot"),
        POSTGRES_STATE=os.path.join(folder, "postgres"),
        POSTFIX_STATE=os.path.join(folder, "postfix"),
        POSTFIX_PLAIN_PORT=str(plain),
        POSTFIX_SUBMISSION_PORT=str(submission),
        # Ends in 465: the CLI takes such a port for an implicit-TLS one.
        POSTFIX_SMTPS_PORT=_free_ports_output("--ending", "465").strip(),
        POSTFIX_SASL_PORT=str(sasl),
    )
    session.run("bash", "tests/interop/postfix.sh", "start", external=True, env=env)
    try:
        session.run("pytest", "-m", "postfix", "tests/interop", env=env)
    finally:
        session.run("bash", "tests/interop/postfix.sh", "purge", external=True, env=env)
        shutil.rmtree(folder, ignore_errors=True)


def _free_ports(count: int) -> list[int]:
    """*count* loopback ports free right now (see tests/interop/free_ports.py)."""
    return [int(line) for line in _free_ports_output(str(count)).split()]


def _free_ports_output(*args: str) -> str:
    return subprocess.run(  # noqa: S603 - a fixed script of this repository
        [sys.executable, "tests/interop/free_ports.py", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark suite: installs smtp-sink/smtp-source, stunnel and the peers,
    runs W1-W5 and writes bench/RESULTS.md (``-- --quick`` for a smoke run)."""
    session.run("bash", "bench/setup.sh", external=True)
    session.install("-e", ".[bench]", "--config-settings", "editable_mode=compat")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing of the reply stream parser (atheris/libFuzzer).

    ``nox -s fuzz`` runs 20,000 inputs (a few seconds; CI runs this); the long
    run is ``nox -s fuzz -- --runs 1000000 --with-corpus`` (about 30 minutes).
    Other arguments go to tests/fuzz/fuzz_reply.py and on to libFuzzer. A crash
    exits non-zero and leaves crash-<sha1> in the working folder.
    """
    session.install("-e", ".[test]", "--config-settings", "editable_mode=compat")
    session.install("atheris>=2.3")
    session.run("python", "tests/fuzz/fuzz_reply.py", *(session.posargs or ["--runs", "20000"]))
