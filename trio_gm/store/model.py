"""The values the group store holds and hands out.

A group is gm's ``#gm_group{}`` record: a name, a view version and the ring
of members in order, where a member that died stays in the ring, marked
dead, until the protocol knows that nothing it sent is still in flight and
erases it. Every membership change produces a new :class:`Group` with the
version bumped by one; these values are immutable so that a view a member
caches can never change under it.

:class:`LostMembership` is what a mutating operation returns instead of a
group when the group is gone or the caller is no longer in its ring (others
recorded it dead during a partition). It is a result, not an exception:
gm's member then stops with reason ``shutdown`` (RabbitMQ issues 714, 950,
953), and a transaction that found this must still end cleanly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import attrs

from .._ids import MemberId


@attrs.frozen
class GroupMember:
    """One place in the ring: a member id and whether that member is dead."""

    id: MemberId
    dead: bool = False


def _as_ring(members: Iterable[GroupMember]) -> tuple[GroupMember, ...]:
    return tuple(members)


def _unique_ids(instance: Group, attribute: attrs.Attribute[object], value: object) -> None:
    members: tuple[GroupMember, ...] = instance.members
    ids = [m.id for m in members]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(
            f"group {instance.name!r}: each member id may appear once in the ring, "
            f"found {', '.join(map(str, dupes))} more than once"
        )


@attrs.frozen
class Group:
    """A group's membership at one view version.

    ``members`` is the ring in order: each member's right neighbour is the
    next alive member after it, wrapping round. A member id appears at most
    once, alive or dead.
    """

    name: str
    version: int
    members: tuple[GroupMember, ...] = attrs.field(converter=_as_ring, validator=_unique_ids)

    @property
    def ids(self) -> tuple[MemberId, ...]:
        """Every member id in ring order, alive or dead."""
        return tuple(m.id for m in self.members)

    @property
    def alive(self) -> tuple[MemberId, ...]:
        """The ids of the alive members, in ring order."""
        return tuple(m.id for m in self.members if not m.dead)

    @property
    def dead(self) -> tuple[MemberId, ...]:
        """The ids of the members marked dead and not yet erased, in ring order."""
        return tuple(m.id for m in self.members if m.dead)

    def is_alive(self, member: MemberId) -> bool:
        """Whether ``member`` is in the ring and not marked dead."""
        return any(m.id == member and not m.dead for m in self.members)

    def __contains__(self, member: object) -> bool:
        """Whether ``member`` is in the ring at all, alive or marked dead."""
        return any(m.id == member for m in self.members)


@attrs.frozen
class LostMembership:
    """The group is gone, or the member that asked is no longer alive in it.

    gm's member stops with reason ``shutdown`` when it gets this.
    """

    group: str
    reason: str
