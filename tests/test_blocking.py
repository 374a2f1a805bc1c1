"""trio_sendmail.blocking: the blocking functions and BlockingPool, used from OS
threads, against fake servers that run in a trio loop of their own thread.

The 32-thread run against Postfix is in ``tests/interop/test_blocking_postfix.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail import blocking
from trio_sendmail.testing import FakeSMTPServer, make_test_certificates

from .helpers import CLIENT_NAME, HOST, ServerVariant
from .test_pool import HANG, Action, Conn, StubServer

ROOT = Path(__file__).resolve().parents[1]
SENDER = "sender@example.com"
TIMEOUTS = ts.Timeouts(connect=10, greeting=10, command=10, data_end=30, quit=5)
#: How long a test waits for a server-side condition before failing (never reached
#: when things work; generous for a loaded machine).
PATIENCE = 60.0

Handler = Callable[[trio.SocketStream], Awaitable[None]]


class ServerThread:
    """Serves *handler* on 127.0.0.1 from a trio loop in a thread of its own."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.token: trio.lowlevel.TrioToken | None = None
        self.scope: trio.CancelScope | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self.token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self.handler, listeners)
                self.ready.set()

    def call(self, function: Callable[[], object]) -> None:
        """Run *function* in the server's loop (e.g. to set a trio.Event)."""
        assert self.token is not None
        trio.from_thread.run_sync(function, trio_token=self.token)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        assert self.ready.wait(PATIENCE)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.token is not None and self.scope is not None
        self.token.run_sync_soon(self.scope.cancel)
        self.thread.join(PATIENCE)


def fake_server(variant: ServerVariant, **kwargs: object) -> FakeSMTPServer:
    return FakeSMTPServer(extensions=variant.extensions(), **kwargs)  # type: ignore[arg-type]


def plain_pool(port: int, **options: object) -> blocking.BlockingPool:
    return blocking.BlockingPool(
        "127.0.0.1",
        port=port,
        tls=ts.TLSMode.INSECURE_PLAINTEXT,
        domain=CLIENT_NAME,
        timeouts=TIMEOUTS,
        **options,  # type: ignore[arg-type]
    )


def message(key: object) -> bytes:
    return b"Subject: blocking %s\r\n\r\nSent from a thread: %s.\r\n" % (
        str(key).encode(),
        str(key).encode(),
    )


def run_threads(count: int, target: Callable[[int], None]) -> list[BaseException]:
    """Run *target(i)* in *count* threads; the exceptions they raised."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
        assert not thread.is_alive()
    return errors


def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait (in a plain thread) until *predicate*, which another thread makes true."""
    done = threading.Event()
    for _ in range(int(PATIENCE / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    pytest.fail("the condition never came true")


# ------------------------------------------------------------------ the functions


@pytest.mark.parametrize("function", ["sendmail", "sendmail_with_starttls"])
def test_blocking_functions(function: str, server_variant: ServerVariant) -> None:
    certs = make_test_certificates()
    server = fake_server(server_variant, hostname=HOST, ssl_context=certs.server_context)
    implicit = function == "sendmail"

    async def handle(stream: trio.SocketStream) -> None:
        await server.handle_stream(stream, implicit_tls=implicit)

    with ServerThread(handle) as srv:
        send = blocking.sendmail if implicit else blocking.sendmail_with_starttls

        async def connect(hostname: str, port: int) -> trio.abc.Stream:
            assert (hostname, port) == (HOST, 2465)
            return await trio.open_tcp_stream("127.0.0.1", srv.port)

        result = send(
            hostname=HOST,
            port=2465,
            sender=SENDER,
            recipients=["a@example.com", "b@example.com"],
            mail=message(function),
            ssl_context=certs.client_context,
            domain=CLIENT_NAME,
            connect=connect,
        )
        assert result.reply.code == 250
        assert [str(path) for path in result.accepted] == ["<a@example.com>", "<b@example.com>"]
        # Errors come out with their own types.
        with pytest.raises(ts.SMTPInputError):
            send(hostname=HOST, sender="bad address", recipients=["a@example.com"], mail=b"x")
    [received] = server.messages
    assert received.data == message(function)
    assert received.tls
    assert server.pipelining_violations == 0
    assert send.__name__ == function
    assert "blocking" in (send.__doc__ or "")


# ------------------------------------------------------------------ the pool


def test_pool_from_many_threads(server_variant: ServerVariant) -> None:
    server = fake_server(server_variant)

    with ServerThread(server.handle_stream) as srv:
        with plain_pool(srv.port, limits=ts.PoolLimits(max_connections=4)) as pool:
            results: dict[tuple[int, int], ts.SendResult] = {}

            def sender(i: int) -> None:
                for j in range(4):
                    results[i, j] = pool.send(SENDER, [f"r{i}@example.com"], message((i, j)))

            assert run_threads(16, sender) == []
            stats = pool.statistics()
        assert pool.closed
    assert len(results) == 64
    assert all(result.reply.code == 250 for result in results.values())
    got = sorted(received.data for received in server.messages)
    assert got == sorted(message((i, j)) for i in range(16) for j in range(4))
    assert server.connections <= 4
    assert stats.connections_open <= 4
    assert server.pipelining_violations == 0


def test_errors_are_raised_in_the_calling_thread(server_variant: ServerVariant) -> None:
    server = fake_server(
        server_variant,
        refuse_recipients={"nobody@example.com": (550, "5.1.1 no such user")},
        refuse_senders={"spammer@example.com": (553, "5.7.1 go away")},
    )
    with ServerThread(server.handle_stream) as srv, plain_pool(srv.port) as pool:
        errors: list[BaseException] = []

        def refused(i: int) -> None:
            try:
                if i % 2:
                    pool.send(SENDER, ["nobody@example.com"], message(i))
                else:
                    pool.send("spammer@example.com", ["a@example.com"], message(i))
            except ts.SMTPError as exc:
                errors.append(exc)
                assert threading.current_thread() is not threading.main_thread()

        assert run_threads(6, refused) == []
        kinds = [ts.SMTPRecipientsRefused, ts.SMTPSenderRefused]
        assert sorted(next(k.__name__ for k in kinds if isinstance(e, k)) for e in errors) == (
            ["SMTPRecipientsRefused"] * 3 + ["SMTPSenderRefused"] * 3
        )
        assert all(isinstance(exc, ts.SMTPPermanentError) for exc in errors)
        with pytest.raises(ts.SMTPInputError):
            pool.send(SENDER, ["not an address"], b"x\r\n")
        with pytest.raises(TypeError):
            pool.send(SENDER, "a@example.com", b"x\r\n")
        # The pool still works.
        assert pool.send(SENDER, ["a@example.com"], message("after")).reply.code == 250
    assert [received.data for received in server.messages] == [message("after")]


def test_bad_arguments_are_refused_before_the_loop_starts() -> None:
    before = threading.active_count()
    with pytest.raises(ts.SMTPInputError):
        blocking.BlockingPool("bad host name")
    with pytest.raises(TypeError):
        blocking.BlockingPool("mail.example.com", limits=3)  # type: ignore[arg-type]
    assert threading.active_count() == before


def test_use_after_close() -> None:
    pool = plain_pool(9)  # nothing is ever connected
    assert repr(pool) == "<trio_sendmail.blocking.BlockingPool 127.0.0.1 open>"
    thread = pool._loop.thread
    assert thread.daemon and thread.is_alive()
    pool.close()
    assert not thread.is_alive()
    assert pool.closed and repr(pool).endswith("closed>")
    with pytest.raises(trio.ClosedResourceError, match="closed"):
        pool.send(SENDER, ["a@example.com"], b"x\r\n")
    with pytest.raises(trio.ClosedResourceError):
        pool.statistics()
    pool.close()  # twice is fine
    with plain_pool(9) as other:
        pass
    assert other.closed
    with pytest.raises(trio.ClosedResourceError):
        other.send(SENDER, ["a@example.com"], b"x\r\n")


@contextmanager
def held_server(variant: ServerVariant) -> Iterator[tuple[StubServer, ServerThread, trio.Event]]:
    """A stub server that holds every end of data until the event is set
    (but that of a message with "warm" in it)."""
    release = trio.Event()

    async def end_of_data(conn: Conn, data: bytes) -> None:
        if b"warm" not in data:
            await release.wait()

    stub = StubServer(variant=variant, end_of_data=end_of_data)
    with ServerThread(stub.handle) as srv:
        yield stub, srv, release


def test_close_waits_for_sends_in_flight(server_variant: ServerVariant) -> None:
    with held_server(server_variant) as (stub, srv, release):
        pool = plain_pool(srv.port, limits=ts.PoolLimits(max_connections=4))
        results: list[ts.SendResult] = []
        senders = threading.Thread(
            target=run_threads,
            args=(4, lambda i: results.append(pool.send(SENDER, ["a@example.com"], message(i)))),
        )
        senders.start()
        wait_until(lambda: len(stub.received) == 4)
        closer = threading.Thread(target=pool.close)
        closer.start()
        wait_until(lambda: pool.closed)
        # Closing: new sends are refused at once, those in flight carry on.
        with pytest.raises(trio.ClosedResourceError):
            pool.send(SENDER, ["a@example.com"], message("late"))
        assert closer.is_alive()
        srv.call(release.set)
        closer.join(PATIENCE)
        senders.join(PATIENCE)
    assert not closer.is_alive() and not senders.is_alive()
    assert sorted(result.reply.code for result in results) == [250] * 4
    assert len(stub.accepted) == 4
    assert all(conn.quit for conn in stub.conns)  # closed politely once idle


def test_close_cancels_sends_after_its_timeout(server_variant: ServerVariant) -> None:
    with held_server(server_variant) as (stub, srv, _release):
        pool = plain_pool(srv.port, limits=ts.PoolLimits(max_connections=2))
        trackers = [ts.OutcomeTracker() for _ in range(2)]
        errors: list[BaseException] = []

        def send(i: int) -> None:
            pool.send(SENDER, ["a@example.com"], message(i), tracker=trackers[i])

        senders = threading.Thread(target=lambda: errors.extend(run_threads(2, send)))
        senders.start()
        wait_until(lambda: len(stub.received) == 2)
        pool.close(timeout=0.2)
        senders.join(PATIENCE)
    assert not senders.is_alive()
    assert [type(exc) for exc in errors] == [ts.SMTPConnectionError] * 2
    for exc in errors:
        assert isinstance(exc, ts.SMTPError)
        assert "closed while the message was sent" in str(exc)
        # The end of data went out and no reply came: the server may have it.
        assert exc.outcome is ts.Outcome.UNKNOWN
    assert [tracker.outcome for tracker in trackers] == [ts.Outcome.UNKNOWN] * 2
    assert not pool._loop.thread.is_alive()


def test_send_timeout(server_variant: ServerVariant) -> None:
    with held_server(server_variant) as (stub, srv, release), plain_pool(srv.port) as pool:
        # A connection is open and idle, so the held message goes out at once.
        assert pool.send(SENDER, ["a@example.com"], message("warm")).reply.code == 250
        with pytest.raises(ts.SMTPTimeoutError) as info:
            pool.send(SENDER, ["a@example.com"], message("slow"), timeout=1.0)
        assert info.value.phase == "send"
        if info.value.outcome is ts.Outcome.UNKNOWN:  # the end of data went out
            wait_until(lambda: len(stub.received) == 2)
        else:  # (only on a machine so loaded that 1 s was not enough to write it)
            assert info.value.outcome is ts.Outcome.NOT_SENT
        with pytest.raises(ValueError, match="timeout"):
            pool.send(SENDER, ["a@example.com"], b"x\r\n", timeout=0)
        srv.call(release.set)
        assert pool.send(SENDER, ["a@example.com"], message("fast")).reply.code == 250
    assert stub.received[0][1] == message("warm")
    assert stub.received[-1][1] == message("fast")


def test_forgotten_pool_is_closed_when_collected(server_variant: ServerVariant) -> None:
    server = fake_server(server_variant)
    with ServerThread(server.handle_stream) as srv:
        pool = plain_pool(srv.port)
        pool.send(SENDER, ["a@example.com"], message("gc"))
        thread = pool._loop.thread
        del pool  # the loop thread holds no reference to the pool: it is collected
        thread.join(PATIENCE)
        assert not thread.is_alive()
    assert [received.data for received in server.messages] == [message("gc")]
    assert ("C", b"QUIT") in server.transcript


# ------------------------------------------------------------------ interpreter exit

UNCLOSED = """
import sys, threading
import trio_sendmail as ts
from trio_sendmail import blocking

blocking.EXIT_GRACE = 0.5
port, mode = int(sys.argv[1]), sys.argv[2]
pool = blocking.BlockingPool(
    "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT, domain="client.example.test"
)
print(pool.send("a@example.com", ["b@example.com"], b"Subject: x\\r\\n\\r\\nx\\r\\n").reply.code)
if mode == "in-flight":
    # A daemon thread is still sending when the interpreter exits.
    started = threading.Event()
    def late():
        started.set()
        try:
            pool.send("a@example.com", ["b@example.com"], b"late\\r\\n")
        except BaseException as exc:
            # One write: print() writes its pieces one by one, and the
            # interpreter may end between two of them (seen: "late send:").
            sys.stdout.write(f"late send: {type(exc).__name__}\\n")
            sys.stdout.flush()
    threading.Thread(target=late, daemon=True).start()
    started.wait()
    sys.stdin.readline()  # the test says when the server holds the late message
print("exiting", flush=True)
"""


@pytest.mark.parametrize("mode", ["idle", "in-flight"])
def test_interpreter_exits_cleanly_with_an_unclosed_pool(mode: str, tmp_path: Path) -> None:
    async def end_of_data(conn: Conn, data: bytes) -> Action:
        return HANG if data == b"late\r\n" else None

    stub = StubServer(end_of_data=end_of_data)
    script = tmp_path / "unclosed.py"
    script.write_text(textwrap.dedent(UNCLOSED), encoding="utf-8")
    with ServerThread(stub.handle) as srv:
        child = subprocess.Popen(
            [sys.executable, "-X", "dev", "-W", "error", str(script), str(srv.port), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if mode == "in-flight":
            wait_until(lambda: len(stub.received) == 2)
        stdout, stderr = child.communicate("go\n", timeout=PATIENCE)
        if mode == "idle":
            wait_until(lambda: all(conn.closed for conn in stub.conns))
    assert child.returncode == 0, stderr
    assert stderr == ""
    assert stdout.splitlines()[:2] == ["250", "exiting"]
    assert len(stub.conns) == 1
    if mode == "idle":
        # The idle connection got QUIT at exit: the pool was closed, not abandoned.
        assert stub.conns[0].quit
    else:
        # The connection was busy with the late message: dropped, without QUIT.
        assert len(stub.received) == 2
        assert not stub.conns[0].quit
        # The hanging send was cancelled after EXIT_GRACE; its thread may or
        # may not get to print before the interpreter ends.
        assert stdout.splitlines()[2:] in ([], ["late send: SMTPConnectionError"])


def test_a_forked_child_gets_an_error_not_a_hang(server_variant: ServerVariant) -> None:
    """The loop thread does not survive fork(): in the child, the pool says so at
    once instead of waiting forever for a thread that is not there (a pool made at
    import time, before a prefork server or task queue forks its workers)."""
    server = fake_server(server_variant)
    with ServerThread(server.handle_stream) as srv, plain_pool(srv.port) as pool:
        pool.send(SENDER, ["before@example.com"], message("before"))
        child = os.fork()
        if child == 0:  # the child: report through the exit status only
            status = 1
            try:
                pool.send(SENDER, ["child@example.com"], message("child"), timeout=1)
            except RuntimeError as exc:
                status = 0 if "fork()" in str(exc) else 2
            except BaseException:
                status = 3
            pool.close()  # nothing to wait for in the child
            os._exit(status)
        deadline = time.monotonic() + PATIENCE
        while (done := os.waitpid(child, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                pytest.fail("the forked child hung on the pool")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(done[1]) == 0
        # The parent's pool is untouched.
        pool.send(SENDER, ["after@example.com"], message("after"))
    assert [m.recipients for m in server.messages] == [
        ("before@example.com",),
        ("after@example.com",),
    ]


def test_a_loop_that_dies_mid_send_reports_the_outcome(server_variant: ServerVariant) -> None:
    """The loop thread dies while a message waits for the reply to its end of data:
    the caller gets an SMTPConnectionError whose outcome is unknown, never the
    "closed: nothing was sent" of a pool closed before the send."""
    with held_server(server_variant) as (stub, srv, _release):
        pool = plain_pool(srv.port)
        tracker = ts.OutcomeTracker()
        errors: list[BaseException] = []

        def send() -> None:
            try:
                pool.send(SENDER, ["a@example.com"], message("doomed"), tracker=tracker)
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        wait_until(lambda: len(stub.received) == 1)

        def crash() -> None:
            raise RuntimeError("a bug in the loop")

        token = pool._loop.token
        assert token is not None
        token.run_sync_soon(crash)  # an error in a loop callback ends trio.run
        sender.join(PATIENCE)
        pool.close()
    assert not sender.is_alive()
    (error,) = errors
    assert type(error) is ts.SMTPConnectionError, repr(error)
    assert "loop stopped during the send" in str(error)
    assert error.outcome is ts.Outcome.UNKNOWN is tracker.outcome
