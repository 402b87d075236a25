"""Actor and member identifiers.

An id is a plain value, never a reference to a Python object: two ids are
equal when they name the same actor, wherever they were made, and an id can
be written to a database row or a network frame and read back unchanged.
That is what lets the store keep the ring and, later, lets a node route a
message to an actor in another process without any actor code changing.
"""

from __future__ import annotations

import attrs


@attrs.frozen(eq=False, unsafe_hash=True, cache_hash=True)
class ActorId:
    """The address of one actor: the node that hosts it and a serial number.

    ``node`` names the node (and its incarnation, so a restarted node never
    reuses an old id); ``serial`` counts actors started on that node. Ids are
    hashable and totally ordered, and ``str()`` reads the same in every
    process.
    """

    node: str
    serial: int

    def __str__(self) -> str:
        return f"<{self.node}.{self.serial}>"

    # Equality and order by (node, serial), written out: ids are compared and
    # sorted all the time (views, the ring's state, the explorer's checks),
    # mostly with themselves, and attrs' generic methods build tuples first
    # (its ordering through a generator, about ten times slower).
    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ActorId):
            return NotImplemented
        return self.serial == other.serial and self.node == other.node

    def __ne__(self, other: object) -> bool:
        if self is other:
            return False
        if not isinstance(other, ActorId):
            return NotImplemented
        return self.serial != other.serial or self.node != other.node

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ActorId):
            return NotImplemented
        return (self.node, self.serial) < (other.node, other.serial)

    def __le__(self, other: object) -> bool:
        if not isinstance(other, ActorId):
            return NotImplemented
        return (self.node, self.serial) <= (other.node, other.serial)

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, ActorId):
            return NotImplemented
        return (self.node, self.serial) > (other.node, other.serial)

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, ActorId):
            return NotImplemented
        return (self.node, self.serial) >= (other.node, other.serial)


#: A gm member is an actor, so a member id is an actor id (as a gm member
#: in Erlang is named by its pid).
MemberId = ActorId
