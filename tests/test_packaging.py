"""Packaging: ``python -m build`` makes a wheel and an sdist with what users need,
and a user's own file type-checks against the installed package.

The build runs on a copy of the files the build reads (never in the working
tree, where it would leave ``build/`` behind) and without network access
(``--no-isolation``: ``build`` and ``setuptools`` come with the ``test`` extra).

The type check runs ``mypy --strict`` from a folder outside the project, as a
user would, against the package as the README installs it (``pip install -e``
with ``editable_mode=compat``). setuptools' default editable mode installs an
import hook that mypy cannot follow, which gives ``import-not-found``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from email.parser import BytesParser
from pathlib import Path

import pytest

import trio_sendmail

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel and an sdist built from a copy of the project's build inputs."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "trio_sendmail",
        source / "trio_sendmail",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel"]
    done = subprocess.run(
        [*command, "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _one(folder: Path, pattern: str) -> Path:
    [path] = sorted(folder.glob(pattern))
    return path


def test_the_sdist_holds_the_license_the_changelog_and_py_typed(dist: Path) -> None:
    sdist = _one(dist, "trio_sendmail-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in (
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "trio_sendmail/py.typed",
        "trio_sendmail/testing/__init__.py",
        "trio_sendmail/_cli/__init__.py",
    ):
        assert name in names, f"{name} missing from {sdist.name}"


def test_the_wheel_holds_the_subpackages_and_the_metadata(dist: Path) -> None:
    wheel = _one(dist, "trio_sendmail-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = BytesParser().parsebytes(archive.read(metadata_name))
    for name in (
        "trio_sendmail/__init__.py",
        "trio_sendmail/py.typed",
        "trio_sendmail/testing/__init__.py",
        "trio_sendmail/testing/_server.py",
        "trio_sendmail/_cli/__init__.py",
    ):
        assert name in names, f"{name} missing from {wheel.name}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    assert not any(n.startswith(("tests/", "bench/", "docs/")) for n in names)
    assert metadata["Name"] == "trio_sendmail"
    assert metadata["Version"] == trio_sendmail.__version__
    assert metadata["License-Expression"] == "MIT"
    urls = dict(value.split(", ", 1) for value in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Source", "Issues", "Changelog"} <= set(urls)
    requirements = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("idna") for r in requirements), requirements


USER_FILE = '''\
"""A user's program: every call here is checked against the installed package."""

import email.message

import trio
import trio_sendmail


async def main() -> trio_sendmail.SendResult:
    message = email.message.EmailMessage()
    message["From"] = "me@example.com"
    message["To"] = "you@example.com"
    async with trio_sendmail.open_session("smtp.example.com", port=587) as session:
        await session.send(mail=message)
        return await session.send("me@example.com", ["you@example.com"], b"Subject: x\\r\\n\\r\\n")


trio.run(main)
'''

WRONG_FILE = """\
import trio_sendmail


async def main() -> None:
    async with trio_sendmail.open_session("smtp.example.com") as session:
        await session.send(mail=b"bytes need a sender and recipients")
        await trio_sendmail.sendmail(hostname=465, mail=b"")
"""


def _mypy(folder: Path, name: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", name]
    return subprocess.run(
        command, cwd=folder, capture_output=True, text=True, timeout=300, check=False
    )


def test_mypy_strict_checks_a_users_file_against_the_installed_package(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(USER_FILE)
    (tmp_path / "wrong.py").write_text(textwrap.dedent(WRONG_FILE))
    hint = (
        "install the package as the README says: pip install -e '.[test]' "
        "--config-settings editable_mode=compat"
    )
    good = _mypy(tmp_path, "app.py")
    assert "import-not-found" not in good.stdout, f"{hint}\n{good.stdout}"
    assert good.returncode == 0, good.stdout + good.stderr
    # The types are really seen (not Any): wrong calls are reported.
    bad = _mypy(tmp_path, "wrong.py")
    assert "import-not-found" not in bad.stdout, f"{hint}\n{bad.stdout}"
    assert bad.returncode == 1, bad.stdout
    assert 'wrong.py:6: error: No overload variant of "send" of "Session"' in bad.stdout
    assert 'wrong.py:7: error: Argument "hostname" to "sendmail" has incompatible type' in (
        bad.stdout
    )
