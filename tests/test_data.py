"""Tests of the DATA encoder: CRLF normalisation and dot-stuffing across chunks (RFC 5321
§4.1.1.4, §4.5.2), and of measure(), the size RFC 1870 §4 asks for."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_sendmail._data import DataEncoder, measure

# --------------------------------------------------------------------------------------------
# Reference model, written independently of the encoder: one byte at a time.


def reference_normalize(body: bytes) -> bytes:
    """Bare CR and bare LF become CRLF; a non-empty body gets a final CRLF if it lacks one."""
    out = bytearray()
    i = 0
    while i < len(body):
        byte = body[i]
        if byte == 0x0D:
            out += b"\r\n"
            if i + 1 < len(body) and body[i + 1] == 0x0A:
                i += 1
        elif byte == 0x0A:
            out += b"\r\n"
        else:
            out.append(byte)
        i += 1
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return bytes(out)


def unstuff(wire: bytes) -> bytes:
    """Undo the encoder's work as a receiving server would (RFC 5321 §4.5.2)."""
    assert wire.endswith(b".\r\n")
    content = wire[: -len(b".\r\n")]
    assert content == b"" or content.endswith(b"\r\n")
    lines = content.split(b"\r\n")[:-1] if content else []
    out = bytearray()
    for line in lines:
        out += (line[1:] if line.startswith(b".") else line) + b"\r\n"
    return bytes(out)


def encode_chunks(chunks: list[bytes], encoder: DataEncoder | None = None) -> bytes:
    enc = encoder if encoder is not None else DataEncoder()
    return b"".join(enc.encode(chunk) for chunk in chunks) + enc.finish()


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


_BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def check_wire(body: bytes, wire: bytes) -> None:
    """The four properties every encoded message must have."""
    # (a) the end-of-data sequence appears only as the final terminator
    if reference_normalize(body):
        assert wire.find(b"\r\n.\r\n") == len(wire) - 5
    else:
        assert wire == b".\r\n"
    # the wire starts at a line start (right after "DATA CRLF"): no early ".CRLF" there
    assert not (len(wire) > 3 and wire.startswith(b".\r\n"))
    # (b) no bare CR, no bare LF
    assert _BARE_CR_OR_LF.search(wire) is None
    # every line that starts with a dot has been stuffed
    for line in wire[:-3].split(b"\r\n"):
        assert not line.startswith(b".") or line.startswith(b"..")
    # (c) unstuffing gives back the normalised body
    assert unstuff(wire) == reference_normalize(body)


# --------------------------------------------------------------------------------------------
# The reference model itself


def test_reference_normalize() -> None:
    assert reference_normalize(b"") == b""
    assert reference_normalize(b"a") == b"a\r\n"
    assert reference_normalize(b"a\rb\nc\r\nd\n\re") == b"a\r\nb\r\nc\r\nd\r\n\r\ne\r\n"
    assert reference_normalize(b"\r\r\n\n") == b"\r\n\r\n\r\n"


def test_unstuff() -> None:
    assert unstuff(b".\r\n") == b""
    assert unstuff(b"..a\r\nb\r\n.\r\n") == b".a\r\nb\r\n"


# --------------------------------------------------------------------------------------------
# Known encodings


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"", b".\r\n"),
        (b"hello", b"hello\r\n.\r\n"),
        (b"hello\r\n", b"hello\r\n.\r\n"),
        (b"hello\n", b"hello\r\n.\r\n"),
        (b"hello\r", b"hello\r\n.\r\n"),
        (b"a\nb\rc\r\nd", b"a\r\nb\r\nc\r\nd\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b".hidden", b"..hidden\r\n.\r\n"),
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
        (b"a\r\n..b\r\n", b"a\r\n...b\r\n.\r\n"),
        (b"a.b\r\n", b"a.b\r\n.\r\n"),
        (b"\r", b"\r\n.\r\n"),
        (b"\n", b"\r\n.\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
        (b"\r\n\r\n", b"\r\n\r\n.\r\n"),
        (b"\x00\xff\x80 8-bit", b"\x00\xff\x80 8-bit\r\n.\r\n"),
        # The 2023 SMTP smuggling sequences
        (b"a\r\n.\r\nMAIL FROM:<x>", b"a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"),
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n.", b"a\r\n..\r\n.\r\n"),
        (b"a\n.", b"a\r\n..\r\n.\r\n"),
    ],
)
def test_known_encoding(body: bytes, wire: bytes) -> None:
    assert encode_chunks([body]) == wire
    check_wire(body, wire)


@pytest.mark.parametrize(
    ("chunks", "wire"),
    [
        ([b"a\r", b"\n.b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r", b".b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\n", b".b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r\n", b".", b"\r\n"], b"a\r\n..\r\n.\r\n"),
        ([b"a\r", b"", b"\n", b".", b"\r", b"\n"], b"a\r\n..\r\n.\r\n"),
        ([b"\r", b"\r", b"\r"], b"\r\n\r\n\r\n.\r\n"),
        ([b".", b"."], b"...\r\n.\r\n"),
        ([b"x", b"."], b"x.\r\n.\r\n"),
    ],
)
def test_known_encoding_across_chunks(chunks: list[bytes], wire: bytes) -> None:
    assert encode_chunks(chunks) == wire


def test_dot_after_chunk_boundary_at_line_start_is_stuffed() -> None:
    enc = DataEncoder()
    assert enc.encode(b"line\r\n") == b"line\r\n"
    assert enc.encode(b".dot") == b"..dot"
    assert enc.encode(b".no") == b".no"  # mid-line: not stuffed
    assert enc.finish() == b"\r\n.\r\n"


def test_trailing_cr_is_held_back_until_the_next_byte() -> None:
    enc = DataEncoder()
    assert enc.encode(b"abc\r") == b"abc"
    assert enc.encode(b"\n") == b"\r\n"
    assert enc.encode(b"\r") == b""
    assert enc.encode(b"x") == b"\r\nx"
    assert enc.finish() == b"\r\n.\r\n"


def test_empty_chunks_change_nothing() -> None:
    enc = DataEncoder()
    assert enc.encode(b"") == b""
    assert enc.encode(b"a\r") == b"a"
    assert enc.encode(b"") == b""
    assert enc.encode(b".") == b"\r\n.."
    assert enc.bytes_in == 3


def test_encode_accepts_bytearray_and_memoryview() -> None:
    enc = DataEncoder()
    out = enc.encode(bytearray(b"a\n")) + enc.encode(memoryview(b".b"))
    assert out + enc.finish() == b"a\r\n..b\r\n.\r\n"


def test_empty_body_is_just_the_terminator() -> None:
    enc = DataEncoder()
    assert enc.finish() == b".\r\n"
    assert enc.bytes_out == 3
    assert enc.bytes_in == 0


def test_counters_count_input_and_output() -> None:
    enc = DataEncoder()
    out = enc.encode(b".a\nb")
    assert out == b"..a\r\nb"
    assert enc.bytes_in == 4
    assert enc.bytes_out == 6
    out += enc.encode(b"c\r")
    assert enc.bytes_in == 6
    assert enc.bytes_out == 7
    out += enc.finish()
    assert out == b"..a\r\nbc\r\n.\r\n"
    assert enc.bytes_out == len(out)


def test_reset_forgets_the_previous_message() -> None:
    enc = DataEncoder()
    enc.encode(b"unterminated line\r")
    assert enc.bytes_in > 0
    enc.reset()
    assert enc.bytes_in == 0
    assert enc.bytes_out == 0
    assert enc.encode(b".x") == b"..x"  # back at a line start, no pending CR
    assert enc.finish() == b"\r\n.\r\n"


def test_finish_leaves_the_encoder_ready_for_the_next_message() -> None:
    enc = DataEncoder()
    first = enc.encode(b"one\r") + enc.finish()
    enc.reset()
    second = enc.encode(b".two") + enc.finish()
    assert first == b"one\r\n.\r\n"
    assert second == b"..two\r\n.\r\n"
    assert enc.bytes_out == len(second)


def test_encoder_reused_without_reset_after_finish_starts_clean() -> None:
    enc = DataEncoder()
    enc.encode(b"mid-line")
    enc.finish()
    assert enc.encode(b".x") == b"..x"


# --------------------------------------------------------------------------------------------
# Exhaustive splits of tricky bodies

TRICKY = [
    b"a\r\n.\r\nb",
    b"\n.\n",
    b"\r.\r\n",
    b"\n.\r\n",
    b"\r\n.\r",
    b"x\r\r\n\n.",
    b".\r.\n.",
    b"..\r\n..",
    b"\r\n\r\n.\r\n.\r\n",
    b"a\r.\rb\n.\nc",
    b"\x00.\xff\r",
]


@pytest.mark.parametrize("body", TRICKY)
def test_every_two_way_split_gives_the_same_output(body: bytes) -> None:
    whole = encode_chunks([body])
    check_wire(body, whole)
    for i in range(len(body) + 1):
        assert encode_chunks([body[:i], body[i:]]) == whole, i


@pytest.mark.parametrize("body", TRICKY)
def test_every_three_way_split_gives_the_same_output(body: bytes) -> None:
    whole = encode_chunks([body])
    for i, j in itertools.combinations_with_replacement(range(len(body) + 1), 2):
        assert encode_chunks([body[:i], body[i:j], body[j:]]) == whole, (i, j)


@pytest.mark.parametrize("body", TRICKY)
def test_one_byte_at_a_time_gives_the_same_output(body: bytes) -> None:
    assert encode_chunks([body[i : i + 1] for i in range(len(body))]) == encode_chunks([body])


# --------------------------------------------------------------------------------------------
# Properties

_PIECES = st.sampled_from(
    [
        b"\r",
        b"\n",
        b".",
        b"\r\n",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\r.\r\n",
        b"\n.\r\n",
        b"\r\n.\r",
        b"..",
        b"\x00",
        b"\xff\xfe",
        b"a",
        b"text ",
    ]
)
_BODIES = st.one_of(
    st.lists(st.one_of(_PIECES, st.binary(max_size=4)), max_size=40).map(b"".join),
    st.binary(max_size=200),
)


@given(body=_BODIES, data=st.data())
def test_encoded_body_properties_in_any_split(body: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12), label="cuts")
    chunks = split_at(body, cuts)
    enc = DataEncoder()
    wire = encode_chunks(chunks, enc)
    check_wire(body, wire)
    assert enc.bytes_in == len(body)
    assert enc.bytes_out == len(wire)
    # (d) the split does not matter
    assert wire == encode_chunks([body])


# --------------------------------------------------------------------------------------------
# measure(): the size and whether normalising can be skipped


@pytest.mark.parametrize(
    ("body", "size"),
    [(b"", 0), (b"a", 3), (b"a\r\n", 3), (b"a\n", 3), (b"a\r", 3), (b"\r\r\n\n", 6), (b".", 3)],
)
def test_measured_size_examples(body: bytes, size: int) -> None:
    assert measure(body)[0] == size


@given(st.binary(max_size=300))
def test_measure_agrees_with_the_encoder(body: bytes) -> None:
    size, clean = measure(body)
    assert size == len(reference_normalize(body))
    bare = body.replace(b"\r\n", b"")
    assert clean == (b"\r" not in bare and b"\n" not in bare)
    if clean:
        # Skipping normalisation gives exactly what normalising gives.
        fast, slow = DataEncoder(), DataEncoder()
        assert fast.encode(body, clean=True) + fast.finish() == slow.encode(body) + slow.finish()


def test_measure_examples() -> None:
    assert measure(b"") == (0, True)
    assert measure(b"a\r\nb\r\n") == (6, True)
    assert measure(b"a\r\nb") == (6, True)
    assert measure(b"a\nb\r\n") == (6, False)
    assert measure(b"a\rb") == (6, False)
