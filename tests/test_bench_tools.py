"""The benchmark's own tools (``bench/``) do what the figures assume: the ceiling
client sends every message and checks every reply code, and the delay proxy
adds its delay in each direction without losing or reordering a byte."""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path
from types import ModuleType

import pytest
import trio

from trio_sendmail.testing import FakeSMTPServer, serve_fake_smtp

from .helpers import VARIANTS, ServerVariant

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(name: str) -> ModuleType:
    """``bench/<name>.py``, loaded by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _params(port: int, connections: int = 2) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": port, "connections": connections}


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
async def test_the_ceiling_sends_every_message(variant: ServerVariant) -> None:
    ceiling = _bench("ceiling")

    server = FakeSMTPServer(extensions=variant.extensions())
    body = b"Subject: x\r\n\r\n.a dot\r\nline.\r\n"
    async with serve_fake_smtp(server) as port:
        await ceiling.run(_params(port), [3, 2], body, "a@example.com", ["b@example.com"])
    assert [m.data for m in server.messages] == [body] * 5
    # The ceiling pipelines across messages: a protocol violation only when
    # the server does not offer PIPELINING.
    assert (server.pipelining_violations > 0) == (not variant.pipelining)


async def test_the_ceiling_checks_every_reply_code() -> None:
    ceiling = _bench("ceiling")

    server = FakeSMTPServer(refuse_recipients={"b@example.com": (550, "5.1.1 No such user")})
    async with serve_fake_smtp(server) as port:
        with pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="expected 250"), flatten_subgroups=True
        ):
            await ceiling.run(_params(port, 1), [2], b"x\r\n", "a@example.com", ["b@example.com"])
    assert server.messages == []


async def test_the_delay_proxy_delays_each_direction_in_order() -> None:
    delay_proxy = _bench("delay_proxy")

    delay = 0.05
    received: list[bytes] = []

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(65536):
                received.append(data)
                await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        (upstream,) = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        upstream_port = upstream.socket.getsockname()[1]
        (proxy,) = await nursery.start(
            partial(
                trio.serve_tcp,
                partial(delay_proxy._connection, upstream_port, delay),
                0,
                host="127.0.0.1",
            )
        )
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.socket.getsockname()[1])
        payload = bytes(range(256)) * 4096  # 1 MiB, in many reads
        async with stream:
            start = trio.current_time()
            await stream.send_all(b"ping")
            assert await stream.receive_some(16) == b"ping"
            assert trio.current_time() - start >= 2 * delay  # once each way
            got = bytearray()

            async def read_back() -> None:
                while len(got) < len(payload):
                    got.extend(await stream.receive_some(65536))

            async with trio.open_nursery() as inner:
                inner.start_soon(read_back)
                await stream.send_all(payload)
            assert bytes(got) == payload
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("how", ["bulk", "session", "ceiling"])
async def test_the_hot_path_bench_server_takes_every_message(
    variant: ServerVariant, how: str
) -> None:
    # bench/hot.py's in-memory server answers every command at once; the
    # figures assume it takes whole messages as a server would.
    hot = _bench("hot")
    streams: list[object] = []
    options = hot._memory_options(variant.chunking, pipelining=variant.pipelining, streams=streams)
    body = b"Subject: x\r\n\r\n.a dot\r\nline.\r\n"
    runner = {"bulk": hot.run_bulk, "session": hot.run_session, "ceiling": hot.run_ceiling}[how]
    await runner(options, 5, 2, body)
    assert sum(stream.messages for stream in streams) == 5  # type: ignore[attr-defined]
    data = b"".join(bytes(stream.data) for stream in streams)  # type: ignore[attr-defined]
    if variant.chunking and how != "ceiling":  # BDAT: the message as it is
        assert data == body * 5
    else:  # DATA: dot-stuffed, each from the CRLF before it on
        assert data == (b"\r\n" + body.replace(b"\r\n.", b"\r\n..")) * 5
