"""Property tests of the parsers and the data encoder (extending tests/test_reply.py,
tests/test_address.py, tests/test_data.py).

* The reply parser agrees with an independent reference parser on *any* byte stream,
  cut anywhere, under any bounds: same replies, and a protocol error exactly when the
  reference rejects the stream.
* The client core, fed any bytes by the server, raises nothing but SMTPError.
* EHLO parsing never raises, and its result is canonical (parsing it again changes
  nothing).
* The address parsers raise only SMTPAddressError on any text (TypeError on any other
  Python type); what parses is canonical, within the RFC 5321 length bounds, free of
  control characters, and makes a command the core accepts or refuses cleanly.
* The data encoder without dot-stuffing (BDAT) gives exactly the normalised body in any
  split, and an encoder reused across messages forgets the previous one.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable
from email.headerregistry import Address
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_sendmail._address import (
    MAX_DOMAIN_OCTETS,
    MAX_LOCAL_PART_OCTETS,
    MAX_PATH_OCTETS,
    Domain,
    DomainKind,
    ForwardPath,
    Mailbox,
    ReversePath,
    domain,
    forward_path,
    reverse_path,
)
from trio_sendmail._capabilities import Capabilities
from trio_sendmail._core import ClientCore
from trio_sendmail._data import DataEncoder, measure
from trio_sendmail._errors import SMTPAddressError, SMTPError
from trio_sendmail._reply import Reply

from ..fuzz.reply_target import (
    LIMITS,
    check_capabilities,
    cut,
    drive_core,
    one_input,
    parse_stream,
    reference_parse,
)
from ..test_data import reference_normalize, split_at

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ reply streams

_CODES = st.one_of(
    st.sampled_from([b"220", b"250", b"354", b"334", b"421", b"535", b"599", b"200"]),
    st.sampled_from([b"199", b"600", b"260", b"2x0", b"25", b"", b"2500", b"\xd9\xa2\xd9\xa5"]),
    st.binary(min_size=3, max_size=3),
)
_SEPS = st.sampled_from([b" ", b"-", b"", b"x", b"\t", b"  "])
_TEXTS = st.one_of(
    st.sampled_from([b"", b"ok", b"2.0.0 ok", b"5.1.1", b"4.7.0  x", b"2.0.00 x", b"3.0.0 x",
                     b"5.999.1 y", b"2.1000.0", b"caf\xc3\xa9", b"caf\xe9", b"a\x00b", b"a\tb",
                     b"\x7f", b"\xf0\x9f\x93\xa7 mail", b"\xed\xa0\x80", b"a\rb", b"\xc2\x85"]),
    st.text(max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=12),
)  # fmt: skip
_EOLS = st.sampled_from([b"\r\n", b"\n", b"\r\r\n", b"", b"\r"])
_LINES = st.builds(lambda c, s, t, e: c + s + t + e, _CODES, _SEPS, _TEXTS, _EOLS)
STREAMS = st.one_of(
    st.lists(_LINES, max_size=12).map(b"".join),
    st.binary(max_size=80),
    st.lists(st.sampled_from([b"250-x\r\n", b"250 y\r\n", b"250-" + b"z" * 40 + b"\r\n"]),
             max_size=40).map(b"".join),
)  # fmt: skip


@SETTINGS
@given(stream=STREAMS, limits=st.sampled_from(LIMITS), seed=st.integers(0, 255))
def test_reply_parser_agrees_with_the_reference_in_any_split(
    stream: bytes, limits: tuple[int, int, int], seed: int
) -> None:
    expected, rejected = reference_parse(stream, limits)
    for chunks in (cut(stream, seed), [stream], cut(stream, 1)):
        replies, failed = parse_stream(chunks, limits)
        assert (replies, failed) == (expected, rejected)


@SETTINGS
@given(
    stream=STREAMS,
    bounds=st.tuples(st.integers(1, 64), st.integers(1, 6), st.integers(1, 200)),
    seed=st.integers(0, 255),
)
def test_reply_parser_under_any_bounds(
    stream: bytes, bounds: tuple[int, int, int], seed: int
) -> None:
    expected, rejected = reference_parse(stream, bounds)
    assert parse_stream(cut(stream, seed), bounds) == (expected, rejected)


@SETTINGS
@given(stream=STREAMS, choice=st.integers(0, 255), seed=st.integers(0, 255))
def test_client_core_raises_only_smtp_errors(stream: bytes, choice: int, seed: int) -> None:
    drive_core(cut(stream, seed), choice)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_fuzz_target_on_random_inputs(data: bytes) -> None:
    one_input(data)


# ------------------------------------------------------------------ EHLO

_EHLO_WORDS = st.one_of(
    st.sampled_from(["AUTH", "auth", "AUTH=PLAIN", "AUTH=", "SIZE", "size", "PIPELINING",
                     "STARTTLS", "8BITMIME", "X-EXT", "-BAD", "A_B", "PLAIN", "LOGIN",
                     "cram-md5", "10240000", "0", "-1", "\u0661\u0662", "\xb2", "\xdf", "\ufb01",
                     "\u0130"]),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=8),
)  # fmt: skip
_WHITESPACE = st.sampled_from([" ", "  ", "\t", "\u3000", "\x85", "\u2028", "\xa0"])
_EHLO_LINES = st.lists(
    st.builds(
        lambda words, spaces: "".join(w + s for w, s in zip(words, spaces, strict=False)),
        st.lists(_EHLO_WORDS, min_size=0, max_size=4),
        st.lists(_WHITESPACE, min_size=4, max_size=4),
    ),
    min_size=1,
    max_size=8,
)


def _render(caps: Capabilities) -> list[str]:
    lines = [caps.server_name or "x"]
    lines += [" ".join((keyword, *params)) for keyword, params in caps.items()]
    return lines


@SETTINGS
@given(lines=_EHLO_LINES, code=st.sampled_from([250, 220, 554]))
def test_ehlo_parsing_never_raises_and_is_canonical(lines: list[str], code: int) -> None:
    caps = Capabilities.from_reply(Reply(code, tuple(lines)))
    check_capabilities(caps)
    again = Capabilities.from_reply(Reply(250, tuple(_render(caps))))
    assert dict(again) == dict(caps)
    # Every AUTH line counts, the legacy AUTH= form included.
    mechanisms: set[str] = set()
    for line in lines[1:]:
        words = line.split()
        if words and words[0].upper() == "AUTH":
            mechanisms.update(word.upper() for word in words[1:])
        elif words and words[0][:5].upper() == "AUTH=":
            mechanisms.update(word.upper() for word in [words[0][5:], *words[1:]] if word)
    assert caps.auth_mechanisms == frozenset(mechanisms)


# ------------------------------------------------------------------ addresses

_SURROGATES = st.sampled_from(["\ud800", "\udfff", "\udc80"])
_ODD = st.sampled_from(["\u200b", "\u202e", "\ufeff", "\u00a0", "\u3000", "\u0085", "\u2028",
                        "\x00", "\r", "\n", "\t", " ", "\x7f", "é", "ü", "ß", "€", "\U0001f4e7",
                        "\u0300", "\u2168", "\u0661"])  # fmt: skip
_ATEXT = st.sampled_from(list(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"))
_SPECIALS = st.sampled_from(list('<>@".\\[]:,;() '))
_CHARS = st.one_of(_ATEXT, _ATEXT, _SPECIALS, _ODD, _SURROGATES,
                   st.characters(exclude_categories=()))  # fmt: skip
_WORDS = st.text(_CHARS, max_size=10)
_LABELS = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["-a", "a-", "xn--bcher-kva", "bücher", "例え", "a" * 63, "a" * 64, "1"]),
    _WORDS,
)
_DOMAINS = st.one_of(
    st.lists(_LABELS, min_size=1, max_size=4).map(".".join),
    st.builds(lambda n: ".".join(["a" * 63] * n), st.integers(3, 5)),
    st.builds(lambda parts: "[" + ".".join(str(p) for p in parts) + "]",
              st.lists(st.integers(0, 999), min_size=3, max_size=5)),
    st.builds(lambda tag, body: f"[{tag}:{body}]",
              st.sampled_from(["IPv6", "ipv6", "IPV6", "x-tag", "-x", "", "a_b"]),
              st.one_of(st.ip_addresses(v=6).map(str), _WORDS,
                        st.sampled_from(["::1", "1::2::3", "::ffff:1.2.3.4", "fe80::1%eth0",
                                         ":::", "1:2:3:4:5:6:7:8:9", "::", "0" * 40]))),
    st.ip_addresses().map(str),
    _WORDS,
)  # fmt: skip
_LOCALS = st.one_of(
    st.lists(st.text(_ATEXT, min_size=1, max_size=6), min_size=1, max_size=3).map(".".join),
    st.builds(lambda body: f'"{body}"', _WORDS),
    st.builds(lambda body: '"' + body.replace("\\", "\\\\").replace('"', '\\"') + '"', _WORDS),
    st.sampled_from(["a" * 64, "a" * 65, "é" * 32, "é" * 33, ".a", "a.", "a..b", '"', '"a',
                     '"a\\"', '"\\é"', "postmaster", "Postmaster"]),
    _WORDS,
)  # fmt: skip
_MAILBOXES = st.builds(lambda local, d: f"{local}@{d}", _LOCALS, _DOMAINS)
_PATHS = st.one_of(
    _MAILBOXES,
    _MAILBOXES.map(lambda m: f"<{m}>"),
    st.builds(lambda route, m: f"<{route}:{m}>",
              st.lists(_DOMAINS.map(lambda d: "@" + d), min_size=1, max_size=3).map(",".join),
              _MAILBOXES),
    st.sampled_from(["", "<>", "< >", "<<>>", "<postmaster>", "postmaster", "<@a:>", "<@:a@b>",
                     "<a@b", "a@b>", "<a@b> SIZE=10", "<" + "a" * 250 + "@b.c>"]),
    st.builds(lambda d: f"<Postmaster@{d}>", _DOMAINS),
)  # fmt: skip
ADDRESS_TEXT = st.one_of(_PATHS, _DOMAINS, _WORDS, st.text(st.characters(exclude_categories=())))

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
PARSERS: dict[str, Callable[[str], Any]] = {
    "Domain": Domain.parse,
    "Mailbox": Mailbox.parse,
    "ReversePath": ReversePath.parse,
    "ForwardPath": ForwardPath.parse,
    "domain()": domain,
    "reverse_path()": reverse_path,
    "forward_path()": forward_path,
}


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def check_wire_form(value: object) -> None:
    wire = str(value)
    assert _CONTROL.search(wire) is None, wire
    if isinstance(value, Domain):
        assert value.kind is not DomainKind.NAME or _octets(wire) <= MAX_DOMAIN_OCTETS
        assert value.needs_smtputf8 == (not wire.isascii())
    if isinstance(value, Mailbox):
        assert _octets(value.local_part) <= MAX_LOCAL_PART_OCTETS
        check_wire_form(value.domain)
        assert value.needs_smtputf8 == (not wire.isascii())
    if isinstance(value, ReversePath | ForwardPath):
        assert wire.startswith("<") and wire.endswith(">")
        assert _octets(wire) <= MAX_PATH_OCTETS
        if value.mailbox is not None:
            check_wire_form(value.mailbox)


def check_core_accepts(value: object) -> None:
    """A parsed value makes a command that the core queues or refuses with an SMTPError."""
    core = ClientCore()
    core.receive_data(b"220 x\r\n")
    assert core.next_event() is not None
    try:
        if isinstance(value, Domain):
            core.ehlo(value)
            assert core.data_to_send().count(b"\r\n") == 1
            return
        core.ehlo(Domain.parse("client.example"))
        core.data_to_send()
        core.receive_data(b"250-x\r\n250 SMTPUTF8\r\n")
        assert core.next_event() is not None
        if isinstance(value, ReversePath):
            core.mail(value, ["SMTPUTF8"] if value.needs_smtputf8 else [])
        elif isinstance(value, ForwardPath):
            core.mail(ReversePath.null(), ["SMTPUTF8"] if value.needs_smtputf8 else [])
            core.rcpt(value)
        else:
            return
        sent = core.data_to_send()
        # One line per command: no CR or LF inside a command.
        assert sent.endswith(b"\r\n")
        assert sent.count(b"\n") == sent.count(b"\r") == sent.count(b"\r\n") == len(core.inflight)
    except SMTPError:
        pass


@SETTINGS
@given(text=ADDRESS_TEXT)
def test_address_parsers_raise_only_address_errors_and_are_canonical(text: str) -> None:
    for name, parse in PARSERS.items():
        try:
            value = parse(text)
        except SMTPAddressError:
            continue
        wire = str(value)
        again = parse(wire)
        assert again == value, (name, text, wire)
        assert str(again) == wire, (name, text)
        check_wire_form(value)
        check_core_accepts(value)


@SETTINGS
@given(text=_PATHS)
def test_paths_and_their_mailboxes_agree(text: str) -> None:
    try:
        forward = ForwardPath.parse(text)
    except SMTPAddressError:
        return
    if forward.mailbox is not None:
        assert Mailbox.parse(str(forward.mailbox)) == forward.mailbox
        assert ForwardPath(forward.mailbox) == forward
        try:
            reverse = ReversePath.parse(text)
        except SMTPAddressError:
            # Only the postmaster may be a forward path and not a reverse one.
            assert forward.is_postmaster
        else:
            assert reverse.mailbox == forward.mailbox


NOT_STR: list[object] = [b"a@b.c", bytearray(b"a@b"), 1, 1.5, None, ["a@b"], ("a", "b"),
                         {"a": "b"}, object(), memoryview(b"a@b"), Address("x", "a", "b.c"),
                         ipaddress.ip_address("192.0.2.1")]  # fmt: skip


@pytest.mark.parametrize("value", NOT_STR, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("name", ["Domain", "Mailbox", "ReversePath", "ForwardPath"])
def test_address_parsers_refuse_other_types_with_type_error(name: str, value: object) -> None:
    with pytest.raises(TypeError):
        PARSERS[name](value)  # type: ignore[arg-type]


@SETTINGS
@given(local=st.one_of(_LOCALS, _WORDS), dom=st.one_of(_DOMAINS, _WORDS))
def test_mailbox_constructor_raises_only_address_errors(local: str, dom: str) -> None:
    try:
        mailbox = Mailbox(local, dom)
    except SMTPAddressError:
        return
    assert Mailbox.parse(str(mailbox)) == mailbox
    check_wire_form(mailbox)


# ------------------------------------------------------------------ the data encoder

_PIECES = st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.\r\n", b"\n.\n", b"\r.\r\n",
                           b"\n.\r\n", b"\r\n.\r", b"..", b"\x00", b"\xff", b"a",
                           b" "])  # fmt: skip
BODIES = st.one_of(
    st.lists(st.one_of(_PIECES, st.binary(max_size=4)), max_size=40).map(b"".join),
    st.binary(max_size=120),
)


def _encode(encoder: DataEncoder, chunks: list[bytes], kind: str) -> bytes:
    wrap: Callable[[bytes], bytes | bytearray | memoryview] = {
        "bytes": bytes,
        "bytearray": bytearray,
        "memoryview": memoryview,
    }[kind]
    return b"".join(encoder.encode(wrap(chunk)) for chunk in chunks) + encoder.finish()


@SETTINGS
@given(body=BODIES, cuts=st.lists(st.integers(0, 200), max_size=10),
       kind=st.sampled_from(["bytes", "bytearray", "memoryview"]))  # fmt: skip
def test_bdat_encoding_is_exactly_the_normalised_body(
    body: bytes, cuts: list[int], kind: str
) -> None:
    chunks = split_at(body, [c % (len(body) + 1) for c in cuts])
    encoder = DataEncoder(stuff=False)
    wire = _encode(encoder, chunks, kind)
    assert wire == reference_normalize(body)
    assert len(wire) == measure(body)[0]
    assert encoder.bytes_in == len(body) and encoder.bytes_out == len(wire)


@SETTINGS
@given(bodies=st.lists(BODIES, min_size=2, max_size=4), stuff=st.booleans(),
       reset=st.booleans(), seed=st.integers(0, 255))  # fmt: skip
def test_a_reused_encoder_forgets_the_previous_message(
    bodies: list[bytes], stuff: bool, reset: bool, seed: int
) -> None:
    shared = DataEncoder(stuff=stuff)
    for body in bodies:
        if reset:
            shared.reset()
        fresh = DataEncoder(stuff=stuff)
        chunks = cut(body, seed)
        assert _encode(shared, chunks, "bytes") == _encode(fresh, [body], "bytes")


@SETTINGS
@given(body=BODIES, stuff=st.booleans())
def test_an_interrupted_message_then_reset_does_not_leak_into_the_next(
    body: bytes, stuff: bool
) -> None:
    encoder = DataEncoder(stuff=stuff)
    encoder.encode(b"half a line\r")  # a CR held back, mid-line
    encoder.reset()
    assert _encode(encoder, [body], "bytes") == _encode(DataEncoder(stuff=stuff), [body], "bytes")
