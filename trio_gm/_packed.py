"""Messages as the ring carries them on a node with a network side.

``broadcast`` encodes a message once (``Codec.pack``) and the ring carries
the pair ``(value, data)``: the message and the bytes the codec made of it.
The encoder writes the bytes of a run of them as they are, and a receiver
keeps the bytes it got, so no hop encodes a message again; ``handle_msg``
gets ``value``. A plain pair, not an object: one is made per message at
every hop, and a tuple is the cheapest thing Python makes.

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
