"""A user message together with its encoded bytes (encode once, at broadcast)."""

from __future__ import annotations

from typing import Any


class Packed:
    """A user message and the bytes the node's codec made of it.

    ``Codec.pack`` makes one when ``broadcast`` accepts a message on a node
    with a network side. The ring carries it in place of the message, the
    encoder writes ``data`` as it is, and a receiver keeps the bytes it got,
    so no hop encodes the message again. ``value`` is what ``handle_msg``
    receives. Two are equal when their bytes are.
    """

    __slots__ = ("data", "value")

    def __init__(self, value: Any, data: bytes) -> None:
        self.value = value
        self.data = data

    def __repr__(self) -> str:
        return f"Packed({self.value!r}, {len(self.data)} bytes)"

    def __eq__(self, other: object) -> bool:
        return type(other) is Packed and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)
