"""What the CLI tests share: an isolated home folder, an in-process runner, a
subprocess runner of the real ``trio-sendmail`` program, and the fake server served
from a thread (the command runs ``trio.run`` itself)."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio

from trio_sendmail.__main__ import main
from trio_sendmail.testing import FakeSMTPServer, serve_fake_smtp

REPO = Path(__file__).resolve().parent.parent
#: The installed console script (the venv's), else ``python -m trio_sendmail``.
_SCRIPT = Path(sys.executable).parent / "trio-sendmail"
PROGRAM = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "trio_sendmail"]
#: Variables that would let the machine's own settings leak into a test.
_LEAKY = ("XDG_CONFIG_HOME", "TRIO_SENDMAIL_PASSWORD", "COLUMNS")
#: The system-wide profile file of the tests: none, unless a test writes one.
SYSTEM_CONFIG_ENV = "TRIO_SENDMAIL_SYSTEM_CONFIG"

RawHandler = Callable[[trio.SocketStream], Awaitable[None]]


@attrs.frozen
class Run:
    status: int
    out: str
    err: str


CLI = Callable[..., Run]


def isolate_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real ~/.netrc, config file or password variable leaks into a test."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv(SYSTEM_CONFIG_ENV, str(tmp_path / "no-system-config.toml"))
    for name in _LEAKY:
        monkeypatch.delenv(name, raising=False)
    return home


def subprocess_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a subprocess: *home* as HOME, no system-wide profile file."""
    env = {**os.environ, "HOME": str(home), SYSTEM_CONFIG_ENV: str(home / "no-system.toml")}
    for name in _LEAKY:
        env.pop(name, None)
    env.update(extra)
    return env


def run_program(
    args: list[str], stdin: bytes, home: Path, *, timeout: float = 60, **extra: str
) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``trio-sendmail`` program with *args*, *stdin* and a private home."""
    return subprocess.run(
        [*PROGRAM, *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        env=subprocess_env(home, **extra),
        timeout=timeout,
        check=False,
    )


def in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], message: bytes
) -> CLI:
    """Run ``main(argv)`` in-process with *stdin* (default *message*); return
    status, stdout and stderr."""

    def run(*argv: str, stdin: bytes = message) -> Run:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exc:  # argparse's usage errors and --help
            status = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Run(status, captured.out, captured.err)

    return run


@contextlib.contextmanager
def serving_in_thread(
    server: FakeSMTPServer | None = None,
    *,
    implicit_tls: bool = False,
    handler: RawHandler | None = None,
) -> Iterator[int]:
    """Serve *server* (or a raw *handler*) on 127.0.0.1 from a thread; yield the port."""
    started: queue.Queue[tuple[int, trio.lowlevel.TrioToken, trio.CancelScope] | BaseException]
    started = queue.Queue()
    errors: list[BaseException] = []

    async def run() -> None:
        with trio.CancelScope() as scope:
            token = trio.lowlevel.current_trio_token()
            if handler is None:
                assert server is not None
                async with serve_fake_smtp(server, implicit_tls=implicit_tls) as port:
                    started.put((port, token, scope))
                    await trio.sleep_forever()
            else:
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                port = listeners[0].socket.getsockname()[1]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.serve_listeners, handler, listeners)
                    started.put((port, token, scope))

    def target() -> None:
        try:
            trio.run(run)
        except BaseException as exc:
            errors.append(exc)
            started.put(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    item = started.get(timeout=10)
    if isinstance(item, BaseException):
        raise item
    port, token, scope = item
    try:
        yield port
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(10)
        if errors:
            raise errors[0]


def plain(port: int, *more: str) -> list[str]:
    """The options of a plaintext connection to a test server on 127.0.0.1:*port*."""
    return ["--host", "127.0.0.1", "--port", str(port), "--tls", "none", *more]
