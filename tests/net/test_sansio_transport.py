"""The framing and the handshake without sockets: bytes in, frames and bytes out.

``FrameDecoder`` and ``Handshake`` do no I/O, so these tests feed them bytes
by hand: in one piece, byte by byte, several frames at once, hostile ones.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gm.transport.codec import Codec
from trio_gm.transport.frames import (
    _BEAT_RECORD,
    _HEADER,
    _LENGTH,
    BEAT,
    LAST,
    MAX_HANDSHAKE_FRAME,
    MORE,
    WHOLE,
    Challenge,
    FrameDecoder,
    FrameError,
    Hello,
    Response,
    Welcome,
)
from trio_gm.transport.handshake import (
    NONCE_SIZE,
    PROOF_SIZE,
    Handshake,
    HandshakeFailed,
    HandshakeStateError,
    Phase,
    _proof,
)
from trio_gm.transport.tcp import internal_classes, wire_frame

DIALER = "127.0.0.1:1001#d"
ACCEPTOR = "127.0.0.1:1002#a"
COOKIE = b"the cookie"
D_NONCE = b"d" * NONCE_SIZE
A_NONCE = b"a" * NONCE_SIZE


@pytest.fixture
def codec() -> Codec:
    return Codec(internal_classes())


def record(kind: int, body: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(body)) + body


def handshake_frame(codec: Codec, value: Any) -> bytes:
    data = codec.encode(value)
    return _LENGTH.pack(len(data)) + data


def drain(decoder: FrameDecoder) -> list[bytes]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


# -- FrameDecoder: records ---------------------------------------------------


def test_several_frames_in_one_feed() -> None:
    decoder = FrameDecoder()
    decoder.feed(record(WHOLE, b"one") + _BEAT_RECORD + record(WHOLE, b"") + record(WHOLE, b"3"))
    assert drain(decoder) == [b"one", b"", b"3"]
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


def test_frames_fed_byte_by_byte() -> None:
    wire = (
        record(WHOLE, b"first")
        + _BEAT_RECORD
        + record(MORE, b"ch")
        + _BEAT_RECORD
        + record(MORE, b"unk")
        + record(LAST, b"ed")
        + record(WHOLE, b"last")
    )
    decoder = FrameDecoder()
    frames = []
    for i in range(len(wire)):
        decoder.feed(wire[i : i + 1])
        frames += drain(decoder)
    assert frames == [b"first", b"chunked", b"last"]
    assert decoder.buffered == 0


def test_a_partial_frame_waits_for_its_body() -> None:
    decoder = FrameDecoder()
    decoder.feed(record(WHOLE, b"hello")[:-2])
    assert decoder.next_frame() is None
    assert decoder.buffered == 8
    decoder.feed(b"lo" + record(WHOLE, b"x")[:3])
    assert decoder.next_frame() == b"hello"
    assert decoder.next_frame() is None
    assert decoder.buffered == 3


@given(
    frames=st.lists(st.binary(max_size=300), max_size=8),
    chunk_size=st.integers(1, 64),
    cuts=st.lists(st.integers(0, 5000), max_size=12),
)
@settings(max_examples=200, deadline=None)
def test_any_split_of_the_records_gives_the_same_frames(
    frames: list[bytes], chunk_size: int, cuts: list[int]
) -> None:
    """What ``wire_frame`` makes (with heartbeats between), cut anywhere."""
    wire = _BEAT_RECORD.join(wire_frame(frame, chunk_size=chunk_size) for frame in frames)
    points = sorted({0, len(wire), *(cut for cut in cuts if cut < len(wire))})
    decoder = FrameDecoder()
    got = []
    for start, end in itertools.pairwise(points):
        decoder.feed(wire[start:end])
        got += drain(decoder)
    assert got == frames


def test_an_oversized_frame_is_refused_on_its_header() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.feed(record(WHOLE, b"x" * 100))
    assert decoder.next_frame() == b"x" * 100
    # The header alone: the body never has to arrive.
    decoder.feed(_HEADER.pack(WHOLE, 101))
    with pytest.raises(FrameError, match=r"^a frame of 101 bytes, above the limit of 100 bytes$"):
        decoder.next_frame()
    assert decoder.buffered == 5


def test_an_oversized_chunked_frame_is_refused_on_the_header_that_crosses() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.feed(record(MORE, b"x" * 60))
    assert decoder.next_frame() is None
    decoder.feed(_HEADER.pack(LAST, 41))
    with pytest.raises(FrameError) as info:
        decoder.next_frame()
    assert info.value.oversize
    assert str(info.value) == "a chunked frame of over 101 bytes, above the limit of 100 bytes"


def test_empty_and_tiny_chunks_cost_only_their_bytes() -> None:
    """A hostile peer's 200,000 empty and one-byte chunks: the chunks so far
    are kept as their bytes, nothing per chunk, and the frame comes out whole."""
    import tracemalloc

    decoder = FrameDecoder(max_frame_size=1 << 20)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            decoder.feed(record(MORE, b"") + record(MORE, bytes([i % 256])))
            assert decoder.next_frame() is None
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert decoder.buffered == 100_000
    # 100,000 bytes of chunks; a list of 200,000 bytes objects was ~7 MB.
    assert grown < 1_000_000, grown
    decoder.feed(record(LAST, b"!"))
    assert decoder.next_frame() == bytes(i % 256 for i in range(100_000)) + b"!"
    decoder.feed(record(WHOLE, b"next"))
    assert decoder.next_frame() == b"next"


def test_a_whole_frame_after_an_empty_chunk_is_refused() -> None:
    decoder = FrameDecoder()
    decoder.feed(record(MORE, b"") + record(WHOLE, b"x"))
    with pytest.raises(FrameError, match="a whole frame between the chunks of another"):
        decoder.next_frame()


def test_a_huge_length_is_refused_without_waiting() -> None:
    decoder = FrameDecoder()
    decoder.feed(_HEADER.pack(WHOLE, 0xFFFFFFFF))
    with pytest.raises(FrameError, match="4294967295 bytes"):
        decoder.next_frame()


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (_HEADER.pack(7, 0), "a record of unknown kind 7"),
        (record(BEAT, b"abc"), "a heartbeat with a body of 3 bytes"),
        (record(MORE, b"ab") + record(WHOLE, b"c"), "a whole frame between the chunks of another"),
    ],
)
def test_records_that_break_the_framing(wire: bytes, message: str) -> None:
    decoder = FrameDecoder()
    decoder.feed(wire)
    with pytest.raises(FrameError, match=f"^{message}$") as info:
        drain(decoder)
    assert not info.value.oversize
    # Broken for good: the same error again, never a frame.
    decoder.feed(record(WHOLE, b"more"))
    with pytest.raises(FrameError, match=f"^{message}$"):
        decoder.next_frame()


def test_frames_before_a_bad_record_come_out_first() -> None:
    decoder = FrameDecoder()
    decoder.feed(record(WHOLE, b"good") + _HEADER.pack(9, 0))
    assert decoder.next_frame() == b"good"
    with pytest.raises(FrameError):
        decoder.next_frame()


@given(st.binary(max_size=200), st.integers(1, 50))
@settings(max_examples=300, deadline=None)
def test_random_bytes_give_frames_or_a_frame_error(data: bytes, step: int) -> None:
    for handshake in (False, True):
        decoder = FrameDecoder(max_frame_size=64, handshake=handshake)
        try:
            for start in range(0, len(data), step):
                decoder.feed(data[start : start + step])
                for frame in drain(decoder):
                    assert len(frame) <= (MAX_HANDSHAKE_FRAME if handshake else 64)
        except FrameError:
            pass


# -- FrameDecoder: handshake framing ---------------------------------------


def test_handshake_framing_byte_by_byte() -> None:
    wire = _LENGTH.pack(3) + b"abc" + _LENGTH.pack(0) + _LENGTH.pack(2) + b"de" + b"rest"
    decoder = FrameDecoder(handshake=True)
    frames: list[bytes] = []
    for i in range(len(wire)):
        decoder.feed(wire[i : i + 1])
        # (A handshake reads no further than its last frame: what follows is records.)
        while len(frames) < 3 and (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    assert frames == [b"abc", b"", b"de"]
    assert decoder.take_unparsed() == b"rest"
    assert decoder.buffered == 0


def test_an_oversized_handshake_frame_is_refused_on_its_prefix() -> None:
    decoder = FrameDecoder(handshake=True)
    decoder.feed(_LENGTH.pack(MAX_HANDSHAKE_FRAME + 1))
    with pytest.raises(FrameError, match=r"^a handshake frame of 4097 bytes \(at most 4096\)$"):
        decoder.next_frame()


# -- Handshake ---------------------------------------------------------------


def pair(codec: Codec, *, dialer_cookie: bytes = COOKIE) -> tuple[Handshake, Handshake]:
    dialer = Handshake.dialer(
        codec, name=DIALER, cookie=dialer_cookie, peer=ACCEPTOR, nonce=D_NONCE
    )
    acceptor = Handshake.acceptor(codec, name=ACCEPTOR, cookie=COOKIE, nonce=A_NONCE)
    return dialer, acceptor


def pump(source: Handshake, sink: Handshake, *, byte_by_byte: bool = False) -> None:
    """Carry what ``source`` has to send to ``sink`` and let ``sink`` handle it."""
    data = source.data_to_send()
    pieces = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    for piece in pieces:
        sink.receive_data(piece)
        while sink.expecting and sink.step():
            pass


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_a_handshake_that_succeeds(codec: Codec, byte_by_byte: bool) -> None:
    dialer, acceptor = pair(codec)
    assert dialer.phase is Phase.SENT_HELLO
    assert acceptor.phase is Phase.AWAIT_HELLO
    pump(dialer, acceptor, byte_by_byte=byte_by_byte)
    assert acceptor.phase is Phase.SENT_CHALLENGE
    assert acceptor.peer == DIALER
    pump(acceptor, dialer, byte_by_byte=byte_by_byte)
    assert dialer.phase is Phase.SENT_RESPONSE
    pump(dialer, acceptor, byte_by_byte=byte_by_byte)
    assert acceptor.phase is Phase.AUTHENTICATED
    assert not acceptor.expecting
    acceptor.accept()
    assert acceptor.phase is Phase.ESTABLISHED
    welcome = acceptor.data_to_send()
    assert welcome == handshake_frame(codec, Welcome())
    # The first records may arrive with the Welcome: they are left for the connection.
    first = record(WHOLE, b"a record")
    dialer.receive_data(welcome + first)
    assert dialer.step()
    assert dialer.phase is Phase.ESTABLISHED
    assert dialer.data_to_send() == b""
    assert dialer.take_unparsed() == first
    assert acceptor.take_unparsed() == b""


def test_the_proofs_are_the_cookies(codec: Codec) -> None:
    dialer, acceptor = pair(codec)
    pump(dialer, acceptor)
    challenge = codec.decode(acceptor.data_to_send()[4:])
    assert challenge == Challenge(
        ACCEPTOR, A_NONCE, _proof(COOKIE, b"acceptor", D_NONCE, A_NONCE, DIALER, ACCEPTOR)
    )
    dialer.receive_data(handshake_frame(codec, challenge))
    assert dialer.step()
    response = codec.decode(dialer.data_to_send()[4:])
    assert response == Response(_proof(COOKIE, b"dialer", A_NONCE, D_NONCE, DIALER, ACCEPTOR))


def test_a_rejected_dialer(codec: Codec) -> None:
    dialer, acceptor = pair(codec)
    pump(dialer, acceptor)
    pump(acceptor, dialer)
    pump(dialer, acceptor)
    acceptor.reject("the connection dialed by the smaller name wins")
    assert acceptor.phase is Phase.REJECTED
    pump(acceptor, dialer)
    assert dialer.phase is Phase.REJECTED
    assert dialer.reject_reason == "the connection dialed by the smaller name wins"


def test_an_acceptor_with_another_cookie(codec: Codec) -> None:
    dialer, acceptor = pair(codec, dialer_cookie=b"another cookie")
    pump(dialer, acceptor)
    with pytest.raises(HandshakeFailed, match=f"^{ACCEPTOR} does not know the cookie$") as info:
        pump(acceptor, dialer)
    assert not info.value.malformed
    assert dialer.phase is Phase.FAILED
    assert dialer.data_to_send() == b""  # no Response for an acceptor that failed


def test_a_dialer_with_another_cookie(codec: Codec) -> None:
    acceptor = Handshake.acceptor(codec, name=ACCEPTOR, cookie=COOKIE, nonce=A_NONCE)
    acceptor.receive_data(handshake_frame(codec, Hello(DIALER, D_NONCE)))
    assert acceptor.step()
    wrong = _proof(b"another cookie", b"dialer", A_NONCE, D_NONCE, DIALER, ACCEPTOR)
    acceptor.receive_data(handshake_frame(codec, Response(wrong)))
    with pytest.raises(HandshakeFailed, match=f"^'{DIALER}' does not know the cookie$") as info:
        acceptor.step()
    assert not info.value.malformed
    assert acceptor.phase is Phase.FAILED


def test_another_node_answering(codec: Codec) -> None:
    dialer = Handshake.dialer(codec, name=DIALER, cookie=COOKIE, peer="127.0.0.1:1002#old")
    proof = _proof(COOKIE, b"acceptor", dialer.nonce, A_NONCE, DIALER, ACCEPTOR)
    dialer.receive_data(handshake_frame(codec, Challenge(ACCEPTOR, A_NONCE, proof)))
    with pytest.raises(HandshakeFailed, match=r"but '127\.0\.0\.1:1002#a' answered") as info:
        dialer.step()
    assert not info.value.malformed


def _hello(name: str = DIALER, nonce: bytes = D_NONCE) -> Hello:
    return Hello(name, nonce)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([_hello(nonce=b"short")], "a Hello with a nonce of 5 bytes, not 16"),
        ([_hello(name="")], "a Hello with an empty node name"),
        ([_hello(name=ACCEPTOR)], "a Hello with this node's own name"),
        ([_hello(name="no port")], "not 'host:port#incarnation'"),
        ([_hello(name="h:1#\x00")], "unprintable characters"),
        ([_hello(name="h:1#" + "x" * 300)], "a node name of 304 characters"),
        ([Response(b"p" * PROOF_SIZE)], "expected Hello, got Response"),
        ([Welcome()], "expected Hello, got Welcome"),
        ([5], "expected Hello, got int"),
        ([_hello(), _hello()], "expected Response, got Hello"),
        ([_hello(), Response(b"short")], "a Response with a proof of 5 bytes, not 32"),
    ],
)
def test_bad_messages_to_an_acceptor(codec: Codec, frames: list[Any], message: str) -> None:
    acceptor = Handshake.acceptor(codec, name=ACCEPTOR, cookie=COOKIE)
    acceptor.receive_data(b"".join(handshake_frame(codec, frame) for frame in frames))

    def run() -> None:
        while acceptor.step():
            pass

    with pytest.raises(HandshakeFailed, match=message) as info:
        run()
    assert info.value.malformed
    assert acceptor.phase is Phase.FAILED


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_LENGTH.pack(3) + b"\xc1\xc1\xc1", "a bad handshake frame"),
        (
            _LENGTH.pack(MAX_HANDSHAKE_FRAME + 1),
            r"a handshake frame of 4097 bytes \(at most 4096\)",
        ),
        (_LENGTH.pack(0xFFFFFFFF) + b"\0" * 16, "a handshake frame of 4294967295 bytes"),
    ],
)
def test_bytes_that_are_no_handshake_frame(codec: Codec, data: bytes, message: str) -> None:
    for side in (
        Handshake.acceptor(codec, name=ACCEPTOR, cookie=COOKIE),
        Handshake.dialer(codec, name=DIALER, cookie=COOKIE, peer=ACCEPTOR),
    ):
        side.receive_data(data)
        with pytest.raises(HandshakeFailed, match=message) as info:
            side.step()
        assert info.value.malformed


def test_a_short_message_waits_for_the_rest(codec: Codec) -> None:
    acceptor = Handshake.acceptor(codec, name=ACCEPTOR, cookie=COOKIE)
    hello = handshake_frame(codec, _hello())
    acceptor.receive_data(hello[:2])
    assert not acceptor.step()
    acceptor.receive_data(hello[2:-1])
    assert not acceptor.step()
    assert acceptor.phase is Phase.AWAIT_HELLO
    assert acceptor.data_to_send() == b""
    acceptor.receive_data(hello[-1:])
    assert acceptor.step()
    assert acceptor.phase is Phase.SENT_CHALLENGE


def test_a_bad_challenge(codec: Codec) -> None:
    dialer = Handshake.dialer(codec, name=DIALER, cookie=COOKIE, peer=ACCEPTOR)
    dialer.receive_data(handshake_frame(codec, Challenge(ACCEPTOR, b"n", b"p" * PROOF_SIZE)))
    with pytest.raises(HandshakeFailed, match="a Challenge with a nonce of 1 bytes") as info:
        dialer.step()
    assert info.value.malformed


def test_a_dialer_expects_a_challenge_then_a_verdict(codec: Codec) -> None:
    dialer = Handshake.dialer(codec, name=DIALER, cookie=COOKIE, peer=ACCEPTOR)
    dialer.receive_data(handshake_frame(codec, Welcome()))
    with pytest.raises(HandshakeFailed, match=r"^expected Challenge, got Welcome$"):
        dialer.step()
    dialer, acceptor = pair(codec)
    pump(dialer, acceptor)
    pump(acceptor, dialer)
    dialer.receive_data(handshake_frame(codec, _hello()))
    with pytest.raises(HandshakeFailed, match=r"^expected Welcome or Reject, got Hello$"):
        dialer.step()


# -- calls in the wrong phase: the caller's bug, said clearly ----------------


def test_wrong_phase_calls(codec: Codec) -> None:
    dialer, acceptor = pair(codec)
    with pytest.raises(HandshakeStateError, match="only the acceptor decides"):
        dialer.accept()
    with pytest.raises(HandshakeStateError, match="not authenticated"):
        acceptor.accept()
    with pytest.raises(HandshakeStateError, match="not authenticated"):
        acceptor.reject("no")
    with pytest.raises(HandshakeStateError, match="is not over"):
        dialer.take_unparsed()
    pump(dialer, acceptor)
    pump(acceptor, dialer)
    pump(dialer, acceptor)
    # Authenticated: it decides before it reads more.
    with pytest.raises(HandshakeStateError, match="expects no frame when authenticated"):
        acceptor.receive_data(b"x")
    with pytest.raises(HandshakeStateError, match="expects no frame when authenticated"):
        acceptor.step()
    acceptor.accept()
    with pytest.raises(HandshakeStateError, match="not authenticated"):
        acceptor.reject("twice")
    pump(acceptor, dialer)
    assert dialer.phase is Phase.ESTABLISHED
    with pytest.raises(HandshakeStateError, match="expects no frame when established"):
        dialer.step()


def test_a_failed_handshake_stays_failed(codec: Codec) -> None:
    acceptor = Handshake.acceptor(codec, name=ACCEPTOR, cookie=COOKIE)
    acceptor.receive_data(handshake_frame(codec, 5))
    with pytest.raises(HandshakeFailed):
        acceptor.step()
    with pytest.raises(HandshakeStateError, match="the handshake failed: expected Hello, got int"):
        acceptor.step()
    with pytest.raises(HandshakeStateError, match="the handshake failed"):
        acceptor.receive_data(b"")


def test_a_dialer_needs_its_peer(codec: Codec) -> None:
    with pytest.raises(ValueError, match="needs the name of the peer"):
        Handshake(codec, dialer=True, name=DIALER, cookie=COOKIE)


@given(st.lists(st.binary(max_size=64), max_size=6), st.booleans())
@settings(max_examples=300, deadline=None)
def test_random_bytes_fail_the_handshake_cleanly(pieces: list[bytes], as_dialer: bool) -> None:
    codec = Codec(internal_classes())
    if as_dialer:
        side = Handshake.dialer(codec, name=DIALER, cookie=COOKIE, peer=ACCEPTOR)
    else:
        side = Handshake.acceptor(codec, name=ACCEPTOR, cookie=COOKIE)
    try:
        for piece in pieces:
            if not side.expecting:
                break
            side.receive_data(piece)
            while side.expecting and side.step():
                pass
    except HandshakeFailed:
        assert side.phase is Phase.FAILED
