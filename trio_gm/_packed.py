"""Messages as the ring carries them on a node with a network side.

``broadcast`` encodes a message once (``Codec.pack``) and the ring carries
the pair ``(value, data)``: the message and the bytes the codec made of it.
The encoder writes the bytes of a run of them as they are, and a receiver
keeps the bytes it got, so no hop encodes a message again; ``handle_msg``
gets ``value``. A plain pair, not an object: one is made per message at
every hop, and a tuple is the cheapest thing Python makes.

A *plain* message (:func:`is_plain`: None, a bool, an int, a float, or a
str or bytes of at most :data:`PLAIN_LEN` characters) travels as itself
instead, checked at ``broadcast`` like any other: msgpack writes and reads
it in C, in the array of the run, for less than making, slicing and
freeing its pair would cost (most of a hop, for small messages). So a
field of packed messages holds pairs and plain values, and any tuple in it
is a pair (a tuple message is never plain).

Which fields of the ring's messages hold runs of them is declared on the
field (:data:`PACKED`); on a node without a network side the same fields
hold the messages themselves.
"""

from __future__ import annotations

from typing import Any, Final

#: ``(value, data)``: a message and its encoded bytes (bytes, or a read-only
#: view of the bytes a large message arrived in).
Packed = tuple[Any, bytes | memoryview]

#: attrs field metadata: this field holds a run of :data:`Packed` messages
#: (on a node with a network side), written on the wire as one extension.
PACKED: Final = {"trio_gm.packed": True}

#: The types of plain messages (a str or bytes also needs ``PLAIN_LEN``).
PLAIN_TYPES: Final = frozenset({type(None), bool, int, float, str, bytes})
#: Plain types without a length.
PLAIN_NUMBERS: Final = frozenset({type(None), bool, int, float})
#: The longest str (in characters) or bytes that is plain.
PLAIN_LEN: Final = 64
#: Encoded bytes of a plain message, at most (4 UTF-8 bytes a character, and
#: a 3-byte header): what batches count a plain message as.
PLAIN_BOUND: Final = 4 * PLAIN_LEN + 3


def is_plain(msg: Any) -> bool:
    """Whether ``msg`` travels as itself (once checked) rather than as a pair."""
    cls = type(msg)
    return cls in PLAIN_NUMBERS or ((cls is str or cls is bytes) and len(msg) <= PLAIN_LEN)


def encoded_bound(wire: Any) -> int:
    """The encoded bytes of what the ring carries for one message, at most."""
    return len(wire[1]) if type(wire) is tuple else PLAIN_BOUND
