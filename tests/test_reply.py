"""Tests of the incremental reply parser and the reply value types (RFC 5321 §4.2, RFC 3463)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_sendmail._errors import SMTPProtocolError
from trio_sendmail._reply import (
    MAX_REPLY_LINE_LENGTH,
    EnhancedStatus,
    Reply,
    ReplyParser,
)

# --------------------------------------------------------------------------------------------
# Helpers


def parse_all(data: bytes, parser: ReplyParser | None = None) -> list[Reply]:
    """Feed *data* in one piece and collect every complete reply."""
    return parse_chunks([data], parser)


def parse_chunks(chunks: list[bytes], parser: ReplyParser | None = None) -> list[Reply]:
    """Feed each chunk in turn, collecting every reply that becomes complete."""
    p = parser if parser is not None else ReplyParser()
    replies: list[Reply] = []
    for chunk in chunks:
        p.feed(chunk)
        while (reply := p.next_reply()) is not None:
            replies.append(reply)
    return replies


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


TRANSCRIPTS: list[tuple[bytes, list[Reply]]] = [
    (b"220 mx.example ESMTP ready\r\n", [Reply(220, ("mx.example ESMTP ready",))]),
    (b"354\r\n", [Reply(354, ("",))]),
    (b"354 \r\n", [Reply(354, ("",))]),
    (
        b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n",
        [Reply(250, ("mx.example", "PIPELINING", "SIZE 1000", "8BITMIME"))],
    ),
    (b"250-\r\n250\r\n", [Reply(250, ("", ""))]),
    (
        b"250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n354 Go ahead\r\n",
        [
            Reply(250, ("Sender ok",), EnhancedStatus(2, 1, 0)),
            Reply(250, ("Recipient ok",), EnhancedStatus(2, 1, 5)),
            Reply(354, ("Go ahead",)),
        ],
    ),
    (
        b"550-5.1.1 No such user\r\n550 5.1.1 Try again never\r\n",
        [Reply(550, ("No such user", "Try again never"), EnhancedStatus(5, 1, 1))],
    ),
    (b"250 caf\xc3\xa9 \t ok\r\n", [Reply(250, ("café \t ok",))]),
]


# --------------------------------------------------------------------------------------------
# Well-formed replies


@pytest.mark.parametrize(("data", "expected"), TRANSCRIPTS)
def test_transcript_fed_whole(data: bytes, expected: list[Reply]) -> None:
    parser = ReplyParser()
    assert parse_all(data, parser) == expected
    assert parser.buffered == 0
    assert not parser.in_reply


@pytest.mark.parametrize(("data", "expected"), TRANSCRIPTS)
def test_transcript_fed_one_byte_at_a_time(data: bytes, expected: list[Reply]) -> None:
    parser = ReplyParser()
    assert parse_chunks(bytewise(data), parser) == expected
    assert parser.buffered == 0


@pytest.mark.parametrize(("data", "expected"), TRANSCRIPTS)
def test_transcript_split_at_every_position(data: bytes, expected: list[Reply]) -> None:
    for cut in range(len(data) + 1):
        assert parse_chunks([data[:cut], data[cut:]]) == expected, cut


@pytest.mark.parametrize(("data", "expected"), TRANSCRIPTS)
def test_transcript_with_bare_lf_line_endings(data: bytes, expected: list[Reply]) -> None:
    assert parse_all(data.replace(b"\r\n", b"\n")) == expected


def test_single_line_reply_fields() -> None:
    (reply,) = parse_all(b"250 OK\r\n")
    assert reply.code == 250
    assert reply.lines == ("OK",)
    assert reply.text == "OK"
    assert reply.enhanced_status is None


def test_multi_line_reply_text_joins_lines() -> None:
    (reply,) = parse_all(b"250-first\r\n250-second\r\n250 third\r\n")
    assert reply.lines == ("first", "second", "third")
    assert reply.text == "first\nsecond\nthird"


def test_bare_354_gives_one_empty_line() -> None:
    (reply,) = parse_all(b"354\r\n")
    assert reply.code == 354
    assert reply.lines == ("",)
    assert reply.is_intermediate


def test_incomplete_reply_returns_none_until_the_last_line() -> None:
    parser = ReplyParser()
    parser.feed(b"250-first\r\n250 sec")
    assert parser.next_reply() is None
    assert parser.in_reply
    parser.feed(b"ond\r\n")
    reply = parser.next_reply()
    assert reply == Reply(250, ("first", "second"))
    assert parser.next_reply() is None
    assert not parser.in_reply


def test_no_bytes_means_no_reply() -> None:
    parser = ReplyParser()
    assert parser.next_reply() is None
    assert not parser.in_reply
    parser.feed(b"")
    assert parser.next_reply() is None


def test_pipelined_replies_come_out_one_at_a_time() -> None:
    parser = ReplyParser()
    parser.feed(b"250 a\r\n251 b\r\n550 c\r\n354 d\r\n")
    assert parser.next_reply() == Reply(250, ("a",))
    assert parser.buffered == len(b"251 b\r\n550 c\r\n354 d\r\n")
    assert parser.next_reply() == Reply(251, ("b",))
    assert parser.next_reply() == Reply(550, ("c",))
    assert parser.next_reply() == Reply(354, ("d",))
    assert parser.next_reply() is None


def test_feed_accepts_bytearray_and_memoryview() -> None:
    parser = ReplyParser()
    parser.feed(bytearray(b"250 a"))
    parser.feed(memoryview(b"bc\r\n"))
    assert parser.next_reply() == Reply(250, ("abc",))


def test_reused_buffer_is_emptied_first() -> None:
    buffer = bytearray(b"stale bytes\r\n")
    parser = ReplyParser(buffer=buffer)
    assert parser.buffered == 0
    parser.feed(b"250 ok\r\n")
    assert parser.next_reply() == Reply(250, ("ok",))


def test_long_line_dripped_byte_by_byte() -> None:
    text = b"x" * 4000
    parser = ReplyParser()
    for byte in bytewise(b"250 " + text):
        parser.feed(byte)
        assert parser.next_reply() is None
    parser.feed(b"\r\n")
    reply = parser.next_reply()
    assert reply is not None
    assert reply.lines == (text.decode(),)


def test_long_multiline_reply_dripped_byte_by_byte() -> None:
    data = b"".join(b"250-" + b"k" * 200 + b"\r\n" for _ in range(100)) + b"250 end\r\n"
    (reply,) = parse_chunks(bytewise(data))
    assert len(reply.lines) == 101
    assert reply.lines[-1] == "end"


@pytest.mark.parametrize(
    ("code", "positive", "intermediate", "transient", "permanent"),
    [
        (250, True, False, False, False),
        (354, False, True, False, False),
        (421, False, False, True, False),
        (554, False, False, False, True),
    ],
)
def test_reply_class_properties(
    code: int, positive: bool, intermediate: bool, transient: bool, permanent: bool
) -> None:
    reply = Reply(code, ("x",))
    assert reply.is_positive is positive
    assert reply.is_intermediate is intermediate
    assert reply.is_transient is transient
    assert reply.is_permanent is permanent


def test_reply_str() -> None:
    assert str(Reply(550, ("a", "b"), EnhancedStatus(5, 1, 1))) == "550 5.1.1 a / b"
    assert str(Reply(354)) == "354"


# --------------------------------------------------------------------------------------------
# Malformed replies: SMTPProtocolError and nothing else


MALFORMED = [
    pytest.param(b"garbage\r\n", id="garbage"),
    pytest.param(b"\r\n", id="empty-line"),
    pytest.param(b"25\r\n", id="short-code"),
    pytest.param(b"2a0 ok\r\n", id="non-digit-code"),
    pytest.param(b"\xff\xfe\xfd ok\r\n", id="binary-code"),
    pytest.param(b"100 ok\r\n", id="code-100"),
    pytest.param(b"199 ok\r\n", id="code-199"),
    pytest.param(b"600 ok\r\n", id="code-600"),
    pytest.param(b"999 ok\r\n", id="code-999"),
    pytest.param(b"000 ok\r\n", id="code-000"),
    pytest.param(b"260 ok\r\n", id="code-260-second-digit"),
    pytest.param(b"590 ok\r\n", id="code-590-second-digit"),
    pytest.param(b"250x\r\n", id="separator-x"),
    pytest.param(b"250xok\r\n", id="separator-x-text"),
    pytest.param(b"2500 ok\r\n", id="four-digit-code"),
    pytest.param(b"250\tok\r\n", id="separator-tab"),
    pytest.param(b"250-a\r\n251 b\r\n", id="mixed-codes"),
    pytest.param(b"250-a\r\n550-b\r\n250 c\r\n", id="mixed-codes-middle"),
    pytest.param(b"250 caf\xe9\r\n", id="latin1-text"),
    pytest.param(b"250 \xc3\x28\r\n", id="invalid-utf8"),
    pytest.param(b"250 \xed\xa0\x80\r\n", id="utf8-surrogate"),
    pytest.param(b"250 a\x00b\r\n", id="nul"),
    pytest.param(b"250 a\x1bb\r\n", id="escape"),
    pytest.param(b"250 a\x7fb\r\n", id="del"),
    pytest.param(b"250 a\x0bb\r\n", id="vertical-tab"),
    pytest.param(b"250 a\rb\r\n", id="cr-inside"),
    pytest.param(b"250 ok\r\r\n", id="double-cr"),
    pytest.param(b"250-ok\r\n250 \x00\r\n", id="nul-on-last-line"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_reply_fed_whole_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(SMTPProtocolError):
        parse_all(data)


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_reply_fed_one_byte_at_a_time_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(SMTPProtocolError):
        parse_chunks(bytewise(data))


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_reply_split_anywhere_raises_protocol_error(data: bytes) -> None:
    for cut in range(len(data) + 1):
        with pytest.raises(SMTPProtocolError):
            parse_chunks([data[:cut], data[cut:]])


@pytest.mark.parametrize(
    "garbage",
    [b"garbage\r\n", b"\x00\x01\x02\n", b"250x\r\n", b"99 no\r\n", b"250 \xff\r\n"],
)
def test_trailing_garbage_raises_after_the_good_reply(garbage: bytes) -> None:
    parser = ReplyParser()
    parser.feed(b"250 fine\r\n" + garbage)
    assert parser.next_reply() == Reply(250, ("fine",))
    with pytest.raises(SMTPProtocolError):
        parser.next_reply()


def test_trailing_garbage_dripped_raises_after_the_good_reply() -> None:
    parser = ReplyParser()
    assert parse_chunks(bytewise(b"250 fine\r\n"), parser) == [Reply(250, ("fine",))]
    with pytest.raises(SMTPProtocolError):
        parse_chunks(bytewise(b"not a reply\r\n"), parser)


# --------------------------------------------------------------------------------------------
# Bounds


def test_line_at_the_length_bound_is_accepted() -> None:
    parser = ReplyParser(max_line_length=10)
    parser.feed(b"250 abcd\r\n")  # exactly 10 bytes, CRLF included
    assert parser.next_reply() == Reply(250, ("abcd",))


def test_feed_raises_as_soon_as_the_line_bound_is_crossed_without_newline() -> None:
    parser = ReplyParser(max_line_length=10)
    parser.feed(b"250 abcde")  # 9 bytes: may still end with LF as the 10th byte
    assert parser.next_reply() is None
    with pytest.raises(SMTPProtocolError):
        parser.feed(b"f")  # 10 bytes and no LF: the line is at least 11 bytes


def test_feed_raises_on_overlong_line_dripped_without_next_reply_calls() -> None:
    parser = ReplyParser(max_line_length=10)
    for byte in bytewise(b"250 abcde"):
        parser.feed(byte)
    with pytest.raises(SMTPProtocolError):
        parser.feed(b"f")


def test_feed_raises_on_overlong_line_in_one_chunk() -> None:
    parser = ReplyParser()
    with pytest.raises(SMTPProtocolError):
        parser.feed(b"250 " + b"a" * MAX_REPLY_LINE_LENGTH)


def test_next_reply_raises_when_the_newline_is_beyond_the_bound() -> None:
    # feed() sees the first line's LF within the bound; the second line (11 bytes) is
    # only measured by next_reply().
    parser = ReplyParser(max_line_length=10)
    parser.feed(b"250 ok\r\n250 abcde\r\n")
    assert parser.next_reply() == Reply(250, ("ok",))
    with pytest.raises(SMTPProtocolError):
        parser.next_reply()


def test_next_reply_raises_on_overlong_continuation_line() -> None:
    parser = ReplyParser(max_line_length=10)
    parser.feed(b"250-ok\r\n250 abcdefg\r\n")
    with pytest.raises(SMTPProtocolError):
        parser.next_reply()


def test_feed_raises_when_an_overlong_line_arrives_with_its_newline() -> None:
    parser = ReplyParser(max_line_length=10)
    with pytest.raises(SMTPProtocolError):
        parser.feed(b"250 abcde\r\n")  # 11 bytes, the LF beyond the bound


def test_default_line_bound() -> None:
    ok = b"250 " + b"a" * (MAX_REPLY_LINE_LENGTH - 6) + b"\r\n"
    assert len(ok) == MAX_REPLY_LINE_LENGTH
    assert len(parse_all(ok)) == 1
    with pytest.raises(SMTPProtocolError):
        parse_all(b"250 " + b"a" * (MAX_REPLY_LINE_LENGTH - 5) + b"\r\n")


def test_overlong_partial_line_after_a_complete_reply_raises() -> None:
    # The first line hides the second one's length from feed(): next_reply must catch it.
    parser = ReplyParser(max_line_length=10)
    parser.feed(b"250 ok\r\n" + b"x" * 20)
    assert parser.next_reply() == Reply(250, ("ok",))
    with pytest.raises(SMTPProtocolError):
        parser.next_reply()


def test_max_lines_is_accepted_one_more_raises() -> None:
    ok = b"250-x\r\n" * 4 + b"250 x\r\n"
    assert parse_all(ok, ReplyParser(max_lines=5)) == [Reply(250, ("x",) * 5)]
    with pytest.raises(SMTPProtocolError):
        parse_all(b"250-x\r\n" * 5 + b"250 x\r\n", ReplyParser(max_lines=5))


def test_max_lines_raises_before_the_reply_ends() -> None:
    parser = ReplyParser(max_lines=3)
    with pytest.raises(SMTPProtocolError):
        parse_chunks([b"250-x\r\n"] * 10, parser)


def test_max_size_is_accepted_one_more_byte_raises() -> None:
    ok = b"250-abc\r\n250 abc\r\n"  # 18 bytes
    assert len(parse_all(ok, ReplyParser(max_size=18))) == 1
    with pytest.raises(SMTPProtocolError):
        parse_all(ok, ReplyParser(max_size=17))


def test_size_bound_is_per_reply() -> None:
    data = b"250 abcdef\r\n" * 5  # 12 bytes each
    assert len(parse_all(data, ReplyParser(max_size=12))) == 5


def test_line_bound_applies_after_an_earlier_reply() -> None:
    parser = ReplyParser(max_line_length=10)
    parser.feed(b"250 ok\r\n")
    assert parser.next_reply() is not None
    parser.feed(b"250 ab")
    assert parser.next_reply() is None
    with pytest.raises(SMTPProtocolError):
        parser.feed(b"cdefgh\r\n")


# --------------------------------------------------------------------------------------------
# Enhanced status codes


def test_enhanced_status_is_split_off() -> None:
    (reply,) = parse_all(b"550 5.1.1 <nobody@example.com>: no such user\r\n")
    assert reply.enhanced_status == EnhancedStatus(5, 1, 1)
    assert reply.lines == ("<nobody@example.com>: no such user",)
    assert reply.enhanced_status.meaning == "Bad destination mailbox address"
    assert reply.enhanced_status.class_meaning == "Permanent failure"
    assert str(reply.enhanced_status) == "5.1.1"


def test_enhanced_status_2_0_0() -> None:
    (reply,) = parse_all(b"250 2.0.0 Ok: queued as 1234\r\n")
    assert reply.enhanced_status == EnhancedStatus(2, 0, 0)
    assert reply.lines == ("Ok: queued as 1234",)
    assert reply.enhanced_status.meaning == "Other undefined status"
    assert reply.enhanced_status.class_meaning == "Success"


def test_enhanced_status_with_nothing_after() -> None:
    (reply,) = parse_all(b"250 2.0.0\r\n")
    assert reply.enhanced_status == EnhancedStatus(2, 0, 0)
    assert reply.lines == ("",)


def test_enhanced_status_with_several_spaces_after() -> None:
    (reply,) = parse_all(b"451 4.3.0   try later\r\n")
    assert reply.enhanced_status == EnhancedStatus(4, 3, 0)
    assert reply.lines == ("try later",)
    assert reply.enhanced_status.class_meaning == "Persistent transient failure"


def test_no_enhanced_status() -> None:
    (reply,) = parse_all(b"250 Ok\r\n")
    assert reply.enhanced_status is None
    assert reply.lines == ("Ok",)


@pytest.mark.parametrize(
    "data",
    [
        b"250 5.1.1 class does not match\r\n",
        b"550 2.0.0 class does not match\r\n",
        b"250 4.0.0 class does not match\r\n",
    ],
)
def test_enhanced_status_class_must_match_the_code(data: bytes) -> None:
    (reply,) = parse_all(data)
    assert reply.enhanced_status is None
    assert reply.lines[0].endswith("class does not match")
    assert reply.lines[0][:5] == data[4:9].decode()


@pytest.mark.parametrize(
    "text",
    [b"2.0.0x", b"2.00.0 x", b"2.0.1000 x", b"2.0 x", b"2..0 x", b"3.0.0 x", b"2.0.0\tx"],
)
def test_almost_enhanced_status_is_left_in_the_text(text: bytes) -> None:
    (reply,) = parse_all(b"250 " + text + b"\r\n")
    assert reply.enhanced_status is None
    assert reply.lines == (text.decode(),)


def test_enhanced_status_of_a_multiline_reply_comes_from_the_first_line() -> None:
    (reply,) = parse_all(b"250-2.1.0 first\r\n250-second\r\n250 2.1.5 third\r\n")
    assert reply.enhanced_status == EnhancedStatus(2, 1, 0)
    assert reply.lines == ("first", "second", "third")


def test_enhanced_status_state_does_not_leak_into_the_next_reply() -> None:
    first, second = parse_all(b"250 2.1.0 ok\r\n250 plain\r\n")
    assert first.enhanced_status == EnhancedStatus(2, 1, 0)
    assert second.enhanced_status is None


def test_enhanced_status_parse() -> None:
    assert EnhancedStatus.parse("4.7.0") == EnhancedStatus(4, 7, 0)
    assert EnhancedStatus.parse("5.7.30") == EnhancedStatus(5, 7, 30)
    assert EnhancedStatus.parse("5.7.30").meaning == "REQUIRETLS support required"


@pytest.mark.parametrize("text", ["", "5.1", "6.1.1", "5.01.1", "5.1.1.1", "x.1.1", "5.1.1 "])
def test_enhanced_status_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="not an enhanced status code"):
        EnhancedStatus.parse(text)


def test_enhanced_status_unknown_meaning_is_none() -> None:
    assert EnhancedStatus(5, 9, 99).meaning is None


# --------------------------------------------------------------------------------------------
# Properties


def split_points(data: st.DataObject, length: int) -> list[int]:
    cuts = data.draw(
        st.lists(st.integers(min_value=0, max_value=length), max_size=8), label="cuts"
    )
    return sorted(cuts)


def cut(blob: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(blob)]
    return [blob[a:b] for a, b in itertools.pairwise(bounds)]


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")),
    max_size=40,
).filter(lambda s: not s[:1].isdigit())
_CODES = st.builds(
    lambda a, b, c: 100 * a + 10 * b + c,
    st.integers(2, 5),
    st.integers(0, 5),
    st.integers(0, 9),
)
_REPLY = st.tuples(_CODES, st.lists(_TEXT, min_size=1, max_size=6))


def render(code: int, lines: list[str], *, eol: bytes = b"\r\n") -> bytes:
    out = []
    for i, text in enumerate(lines):
        sep = " " if i == len(lines) - 1 else "-"
        if not text and sep == " ":
            out.append(f"{code}".encode() + eol)
        else:
            out.append(f"{code}{sep}{text}".encode() + eol)
    return b"".join(out)


_TOKENS = st.sampled_from(
    [
        b"250",
        b"354",
        b"421",
        b"-",
        b" ",
        b"\r\n",
        b"\n",
        b"\r",
        b"2.0.0 ",
        b"5.1.1",
        b"\x00",
        b"\xff",
        b"\xc3\xa9",
        b"ok",
        b"1",
        b"6",
    ]
)
_JUNK = st.one_of(
    st.binary(max_size=60),
    st.lists(st.one_of(_TOKENS, st.binary(max_size=3)), max_size=30).map(b"".join),
)
_NOISE = st.one_of(
    _JUNK,
    # A valid reply, then junk: the junk must still be caught, whatever the split.
    st.tuples(_REPLY, _JUNK).map(lambda pair: render(*pair[0]) + pair[1]),
)


@given(blob=_NOISE, data=st.data())
def test_random_bytes_only_ever_raise_protocol_error(blob: bytes, data: st.DataObject) -> None:
    max_line = data.draw(st.sampled_from([8, 16, MAX_REPLY_LINE_LENGTH]), label="max_line")
    parser = ReplyParser(max_line_length=max_line, max_lines=4, max_size=40)
    try:
        for chunk in cut(blob, split_points(data, len(blob))):
            parser.feed(chunk)
            while (reply := parser.next_reply()) is not None:
                assert 200 <= reply.code < 600
                assert reply.lines
            # Memory stays bounded: only a partial line, shorter than the bound, waits.
            assert parser.buffered < max_line
    except SMTPProtocolError:
        pass


@given(replies=st.lists(_REPLY, min_size=1, max_size=4), lf=st.booleans(), data=st.data())
def test_rendered_replies_round_trip_in_any_split(
    replies: list[tuple[int, list[str]]], lf: bool, data: st.DataObject
) -> None:
    eol = b"\n" if lf else b"\r\n"
    wire = b"".join(render(code, lines, eol=eol) for code, lines in replies)
    parsed = parse_chunks(cut(wire, split_points(data, len(wire))))
    assert [(r.code, list(r.lines)) for r in parsed] == [(code, lines) for code, lines in replies]
    assert all(r.enhanced_status is None for r in parsed)


# --------------------------------------------------------------------------------------------
# The cache of repeated single-line replies


def _replies(parser: ReplyParser, data: bytes) -> list[Reply]:
    parser.feed(data)
    out = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


def test_repeated_single_line_reply_is_served_from_the_cache() -> None:
    parser = ReplyParser()
    first, second = _replies(parser, b"250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n")
    assert first == second == Reply(250, ("Ok",), EnhancedStatus(2, 1, 5))
    assert second is first  # the same immutable object, no parsing


def test_cached_line_inside_a_multi_line_reply_is_parsed_as_a_continuation() -> None:
    parser = ReplyParser()
    assert _replies(parser, b"250 Ok\r\n") == [Reply(250, ("Ok",))]
    # "250 Ok" is cached now, but here it ends a multi-line reply.
    assert _replies(parser, b"250-first\r\n250 Ok\r\n") == [Reply(250, ("first", "Ok"))]


def test_a_bad_line_is_never_cached() -> None:
    parser = ReplyParser()
    for _ in range(2):  # the same parser: refused again, not served from a cache
        with pytest.raises(SMTPProtocolError):
            _replies(parser, b"250 bad\x00text\r\n")
    assert parser._cache == {}


def test_the_cache_is_bounded() -> None:
    parser = ReplyParser()
    lines = b"".join(b"250 queued as %d\r\n" % i for i in range(1000))
    assert len(_replies(parser, lines)) == 1000
    assert 0 < len(parser._cache) <= 32
    # Long lines are parsed every time, never kept.
    long_line = b"250 " + b"x" * 200 + b"\r\n"
    parser = ReplyParser()
    _replies(parser, long_line * 2)
    assert parser._cache == {}
