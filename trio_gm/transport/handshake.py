"""The handshake between two nodes as a state machine, with no I/O.

A :class:`Handshake` plays one side of the cookie's challenge and response
(:mod:`.frames` shows the exchange). It never touches a socket or a clock:
the caller feeds it the bytes the peer sends (:meth:`Handshake.receive_data`),
lets it handle them one frame at a time (:meth:`Handshake.step`), and sends
what it asks for (:meth:`Handshake.data_to_send`). Timeouts, and the choice
between two connections of one pair of nodes, stay with the caller (``tcp``).

The phases, and what moves from one to the next::

    dialer:   SENT_HELLO --Challenge--> SENT_RESPONSE --Welcome--> ESTABLISHED
                                                      --Reject---> REJECTED
    acceptor: AWAIT_HELLO --Hello--> SENT_CHALLENGE --Response--> AUTHENTICATED
              AUTHENTICATED --accept()--> ESTABLISHED
              AUTHENTICATED --reject(reason)--> REJECTED

The dialer's ``Hello`` is queued when it is made. Any frame that is not the
one expected, a field of the wrong size, a peer that does not know the
cookie, or a dialer's name that is no node name fails the handshake with
:class:`HandshakeFailed` (and the phase is ``FAILED``). Calling a method in
a phase where it makes no sense is a bug of the caller's, not of the
peer's: :class:`HandshakeStateError`.

Once the handshake is over, both sides speak records
(:class:`~.frames.FrameDecoder` with ``handshake=False``); the bytes that
arrived after the last handshake frame are :meth:`Handshake.take_unparsed`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from typing import Any, Final

from .codec import Codec, CodecError
from .frames import (
    _LENGTH,
    Challenge,
    FrameDecoder,
    FrameError,
    Hello,
    Reject,
    Response,
    Welcome,
)

#: The size of each side's handshake nonce and of a proof (HMAC-SHA256).
NONCE_SIZE: Final = 16
PROOF_SIZE: Final = hashlib.sha256().digest_size
#: The longest node name a peer may give in its Hello.
MAX_NAME_LENGTH: Final = 255


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or a node name ``"host:port#…"``) to ``(host, port)``."""
    hostport = address.split("#", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected an address 'host:port' with a port 0-65535, got {address!r}")
    return host.strip("[]"), int(port)


def _proof(cookie: bytes, role: bytes, *parts: bytes | str) -> bytes:
    mac = hmac.new(cookie, role, hashlib.sha256)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        mac.update(_LENGTH.pack(len(data)) + data)
    return mac.digest()


def _name_problem(name: str, own: str) -> str | None:
    """What is wrong with ``name`` as the node name a dialer gives, if anything."""
    if not name:
        return "an empty node name"
    if len(name) > MAX_NAME_LENGTH:
        return f"a node name of {len(name)} characters (at most {MAX_NAME_LENGTH})"
    if not name.isprintable():
        return f"the node name {name!r}, which has unprintable characters"
    try:
        split_address(name)
    except ValueError:
        return f"the node name {name!r}, not 'host:port#incarnation'"
    if name == own:
        return "this node's own name"
    return None


class HandshakeFailed(Exception):
    """The peer failed the handshake; ``str()`` says how.

    ``malformed`` is true when a frame was at fault (too long, undecodable,
    of the wrong class, a field of the wrong size or a bad name), false when
    the frames were well formed but wrong (the cookie, the name answering).
    """

    def __init__(self, what: str, *, malformed: bool = False) -> None:
        super().__init__(what)
        self.malformed = malformed


class HandshakeStateError(RuntimeError):
    """A :class:`Handshake` method called in a phase where it makes no sense."""


class Phase(enum.Enum):
    """Where a handshake is (the module docstring shows the moves)."""

    SENT_HELLO = "sent Hello"
    SENT_RESPONSE = "sent Response"
    AWAIT_HELLO = "waiting for Hello"
    SENT_CHALLENGE = "sent Challenge"
    #: The acceptor checked the dialer's proof: :meth:`Handshake.accept` or
    #: :meth:`Handshake.reject` now.
    AUTHENTICATED = "authenticated"
    ESTABLISHED = "established"
    REJECTED = "rejected"
    FAILED = "failed"


#: The phases in which a frame from the peer is expected, and its classes.
_EXPECTED: Final[dict[Phase, tuple[type, ...]]] = {
    Phase.SENT_HELLO: (Challenge,),
    Phase.SENT_RESPONSE: (Welcome, Reject),
    Phase.AWAIT_HELLO: (Hello,),
    Phase.SENT_CHALLENGE: (Response,),
}


class Handshake:
    """One side of one handshake: bytes in, bytes to send and an outcome out.

    Make one with :meth:`dialer` or :meth:`acceptor`. Drive it so::

        send(hs.data_to_send())             # the dialer's Hello
        while hs.expecting:
            if not hs.step():               # handled a frame, or needs bytes
                hs.receive_data(receive())
            send(hs.data_to_send())

    then, for an acceptor in ``AUTHENTICATED``, :meth:`accept` or
    :meth:`reject` and send :meth:`data_to_send` once more. The outcome is
    :attr:`phase` (``ESTABLISHED`` or ``REJECTED``), :attr:`peer` (the
    peer's node name) and, for a dialer rejected, :attr:`reject_reason`.
    """

    def __init__(
        self,
        codec: Codec,
        *,
        dialer: bool,
        name: str,
        cookie: bytes,
        peer: str | None = None,
        nonce: bytes | None = None,
    ) -> None:
        if dialer and peer is None:
            raise ValueError("a dialer's handshake needs the name of the peer it dials")
        self.codec = codec
        self.is_dialer = dialer
        #: This node's name.
        self.name = name
        self.cookie = cookie
        #: The peer's node name: the one dialed, or the one an acceptor's
        #: dialer gave in its Hello (None until then).
        self.peer: str | None = peer
        #: This side's nonce (random unless given, for tests).
        self.nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_SIZE)
        #: The other side's nonce, once known.
        self.peer_nonce: bytes | None = None
        #: The reason a dialer was given in the acceptor's Reject.
        self.reject_reason: str | None = None
        self._decoder = FrameDecoder(handshake=True)
        self._out = bytearray()
        self._failure: HandshakeFailed | None = None
        self._phase: Phase
        if dialer:
            self._phase = Phase.SENT_HELLO
            self._queue(Hello(name, self.nonce))
        else:
            self._phase = Phase.AWAIT_HELLO

    @classmethod
    def dialer(
        cls, codec: Codec, *, name: str, cookie: bytes, peer: str, nonce: bytes | None = None
    ) -> Handshake:
        """The dialing side, ``name`` dialing ``peer``: its Hello is queued."""
        return cls(codec, dialer=True, name=name, cookie=cookie, peer=peer, nonce=nonce)

    @classmethod
    def acceptor(
        cls, codec: Codec, *, name: str, cookie: bytes, nonce: bytes | None = None
    ) -> Handshake:
        """The accepting side, ``name``: it waits for a Hello."""
        return cls(codec, dialer=False, name=name, cookie=cookie, nonce=nonce)

    # -- the caller's side ------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the handshake is: the outcome, once it is over."""
        return self._phase

    @property
    def expecting(self) -> bool:
        """Whether a frame from the peer is due (:meth:`step` makes sense)."""
        return self._phase in _EXPECTED

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the peer; :meth:`step` handles them."""
        self._check_expecting("receive bytes")
        self._decoder.feed(data)

    def step(self) -> bool:
        """Handle the next frame from the peer; ``False`` if its bytes are not all in.

        Raises :class:`HandshakeFailed` if the peer got it wrong (the phase
        is ``FAILED`` from then on).
        """
        self._check_expecting("handle a frame")
        try:
            try:
                data = self._decoder.next_frame()
            except FrameError as exc:
                raise HandshakeFailed(str(exc), malformed=True) from None
            if data is None:
                return False
            try:
                value = self.codec.decode(data)
            except CodecError as exc:
                raise HandshakeFailed(f"a bad handshake frame ({exc})", malformed=True) from exc
            expected = _EXPECTED[self._phase]
            if type(value) not in expected:
                names = " or ".join(cls.__name__ for cls in expected)
                raise HandshakeFailed(
                    f"expected {names}, got {type(value).__name__}", malformed=True
                )
            self._handle(value)
        except HandshakeFailed as exc:
            self._phase = Phase.FAILED
            self._failure = exc
            raise
        except BaseException:
            self._phase = Phase.FAILED
            raise
        return True

    def data_to_send(self) -> bytes:
        """The bytes to send to the peer now (drained: each byte once)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def accept(self) -> None:
        """The acceptor lets the authenticated dialer in: a Welcome is queued."""
        self._check_deciding("accept")
        self._queue(Welcome())
        self._phase = Phase.ESTABLISHED

    def reject(self, reason: str) -> None:
        """The acceptor turns the authenticated dialer away: a Reject is queued."""
        self._check_deciding("reject")
        self._queue(Reject(reason))
        self._phase = Phase.REJECTED

    def take_unparsed(self) -> bytes:
        """The bytes received after the last handshake frame: the first records."""
        if self._phase not in (Phase.AUTHENTICATED, Phase.ESTABLISHED, Phase.REJECTED):
            raise HandshakeStateError(
                f"the handshake is not over ({self._phase.value}): its bytes are not records yet"
            )
        return self._decoder.take_unparsed()

    # -- the protocol -----------------------------------------------------

    def _handle(self, value: Any) -> None:
        cls = type(value)
        if cls is Challenge:
            self._on_challenge(value)
        elif cls is Welcome:
            self._phase = Phase.ESTABLISHED
        elif cls is Reject:
            self.reject_reason = value.reason
            self._phase = Phase.REJECTED
        elif cls is Hello:
            self._on_hello(value)
        else:
            self._on_response(value)

    def _on_challenge(self, challenge: Challenge) -> None:
        if len(challenge.nonce) != NONCE_SIZE or len(challenge.proof) != PROOF_SIZE:
            raise HandshakeFailed(
                f"a Challenge with a nonce of {len(challenge.nonce)} bytes and a "
                f"proof of {len(challenge.proof)} (not {NONCE_SIZE} and {PROOF_SIZE})",
                malformed=True,
            )
        peer = self.peer
        assert peer is not None
        if challenge.name != peer:
            raise HandshakeFailed(f"dialed {peer} but {challenge.name!r} answered")
        expected = _proof(self.cookie, b"acceptor", self.nonce, challenge.nonce, self.name, peer)
        if not hmac.compare_digest(challenge.proof, expected):
            raise HandshakeFailed(f"{peer} does not know the cookie")
        self.peer_nonce = challenge.nonce
        proof = _proof(self.cookie, b"dialer", challenge.nonce, self.nonce, self.name, peer)
        self._queue(Response(proof))
        self._phase = Phase.SENT_RESPONSE

    def _on_hello(self, hello: Hello) -> None:
        if len(hello.nonce) != NONCE_SIZE:
            raise HandshakeFailed(
                f"a Hello with a nonce of {len(hello.nonce)} bytes, not {NONCE_SIZE}",
                malformed=True,
            )
        problem = _name_problem(hello.name, self.name)
        if problem is not None:
            raise HandshakeFailed(f"a Hello with {problem}", malformed=True)
        self.peer = hello.name
        self.peer_nonce = hello.nonce
        proof = _proof(self.cookie, b"acceptor", hello.nonce, self.nonce, hello.name, self.name)
        self._queue(Challenge(self.name, self.nonce, proof))
        self._phase = Phase.SENT_CHALLENGE

    def _on_response(self, response: Response) -> None:
        if len(response.proof) != PROOF_SIZE:
            raise HandshakeFailed(
                f"a Response with a proof of {len(response.proof)} bytes, not {PROOF_SIZE}",
                malformed=True,
            )
        assert self.peer is not None
        assert self.peer_nonce is not None
        expected = _proof(self.cookie, b"dialer", self.nonce, self.peer_nonce, self.peer, self.name)
        if not hmac.compare_digest(response.proof, expected):
            raise HandshakeFailed(f"{self.peer!r} does not know the cookie")
        self._phase = Phase.AUTHENTICATED

    # -- helpers ----------------------------------------------------------

    def _queue(self, value: Any) -> None:
        data = self.codec.encode(value)
        self._out += _LENGTH.pack(len(data))
        self._out += data

    def _check_expecting(self, what: str) -> None:
        if self._phase in _EXPECTED:
            return
        if self._phase is Phase.FAILED:
            detail = f": {self._failure}" if self._failure is not None else ""
            raise HandshakeStateError(f"cannot {what}: the handshake failed{detail}")
        raise HandshakeStateError(
            f"cannot {what}: the {self._role} expects no frame when {self._phase.value}"
        )

    def _check_deciding(self, what: str) -> None:
        if self.is_dialer:
            raise HandshakeStateError(f"cannot {what}: only the acceptor decides")
        if self._phase is not Phase.AUTHENTICATED:
            raise HandshakeStateError(
                f"cannot {what} a dialer not authenticated (the handshake is {self._phase.value})"
            )

    @property
    def _role(self) -> str:
        return "dialer" if self.is_dialer else "acceptor"

    def __repr__(self) -> str:
        return f"<Handshake {self._role} {self.name} with {self.peer}: {self._phase.value}>"
