"""A PostgreSQL password never appears in an error: libpq's URL parser quotes a
token it cannot read (a literal ``%`` in the password), in ``open_outbox`` and
in the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_sendmail.outbox import open_outbox

from ..cli_support import CLI, in_process, isolate_home

URLS = [
    # A password with a literal "%" (not percent-encoded by its user).
    "postgresql://user:Sup3r%Secret@127.0.0.1:1/outbox",
    "postgresql://user@127.0.0.1:1/outbox?password=Sup3r%Secret",
]


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> CLI:
    isolate_home(monkeypatch, tmp_path)
    monkeypatch.delenv("TRIO_SENDMAIL_OUTBOX", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return in_process(monkeypatch, capsys, b"")


@pytest.mark.parametrize("url", URLS)
async def test_open_outbox_error_hides_the_password(url: str) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - any error, but no secret
        async with open_outbox(url):
            pass
    text = f"{info.value!s} {info.value!r}"
    assert "Secret" not in text, text


@pytest.mark.parametrize("url", URLS)
def test_cli_error_hides_the_password(cli: CLI, url: str) -> None:
    run = cli("outbox", "--db", url, "status")
    assert run.status != 0
    assert "Secret" not in run.out + run.err, run.out + run.err
