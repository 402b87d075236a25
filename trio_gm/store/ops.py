"""gm's membership changes, one class each, over :class:`Group` values.

Why these live apart from the database: gm's correctness rests on a total
order of membership changes (Lemma 1 in gm.erl's theory of operation). When
B dies while B' joins, exactly one of B' and C must inherit B's in-flight
messages, and a member can only work out which dead members it inherited if
every addition and every death was applied to the ring one after another,
each producing the next view version. The store supplies that order (each
change is a read-modify-write of one row in a SERIALIZABLE transaction); the
classes here say what each change *is*, given the ring read inside that
transaction.

Each operation is a frozen value (:data:`StoreOp`), so a member can name the
change it wants and a test harness can see it before it runs, and has one
method, ``apply(group, name)``: the ring after the change, given the ring
``group`` read inside the transaction (None if group ``name`` has no row).
``apply`` does no I/O, so it can be tested exhaustively, and a transaction
that is retried after a serialization failure simply calls it again on the
fresh row. :meth:`GroupStore.transact(name, op) <trio_gm.store.GroupStore.transact>`
runs it in the store; the schedule explorer runs it on an in-memory group.

Rules every ``apply`` follows (from the later gm.erl, RabbitMQ 3.13):

- a real change returns a new group with the version bumped by exactly one;
- no change returns the *same* object it was given (the store then writes
  nothing, and the version stays put);
- a missing group, or a caller that is no longer alive in the ring (others
  recorded it dead during a partition), yields :class:`LostMembership`, a
  result and not an exception (issues 714, 950, 953).
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from .._ids import MemberId
from .model import Group, GroupMember, LostMembership

__all__ = [
    "VERSION_START",
    "EraseMembers",
    "PruneOrCreate",
    "RecordDead",
    "RecordNewMember",
    "StoreOp",
]

#: The version a group starts at when nobody knows an older one (gm's
#: ``?VERSION_START``).
VERSION_START = 0


def _missing(name: str) -> LostMembership:
    return LostMembership(group=name, reason=f"group {name!r} does not exist")


def _not_alive(group: Group, member: MemberId, role: str) -> LostMembership:
    where = "marked dead in" if member in group else "not in"
    return LostMembership(
        group=group.name,
        reason=f"{role} {member} is {where} the ring of group {group.name!r} "
        f"(version {group.version})",
    )


@attrs.frozen
class PruneOrCreate:
    """The group a first member joins: the existing one if anyone in it is alive.

    Otherwise (no row, or every recorded member dead) the group is replaced
    by a ring holding only ``self_id``. Its version is never lower than
    ``min_version``, the newest version the member has seen (RabbitMQ bug
    25670: a group recreated at version 0 made members with a newer cached
    view ignore the change), and, when a row exists, always above it, so the
    replacement is a change every reader of the old row can see.
    """

    #: The operation's name in the store's errors and logs.
    operation: ClassVar[str] = "prune_or_create_group"

    self_id: MemberId
    min_version: int = VERSION_START

    def apply(self, group: Group | None, name: str) -> Group:
        """The group to store; never a :class:`LostMembership`.

        A ``group`` whose name is not ``name`` is a ``ValueError``.
        """
        if group is not None:
            if group.name != name:
                raise ValueError(f"asked for group {name!r} but was given group {group.name!r}")
            if group.alive:
                return group
        version = self.min_version if group is None else max(self.min_version, group.version + 1)
        return Group(name=name, version=version, members=(GroupMember(self.self_id),))


@attrs.frozen
class RecordNewMember:
    """Insert ``new`` just right of ``left``, which must be alive in the ring.

    ``left`` is the member answering the join (gm's ``add_on_right``); if it
    is no longer alive in the stored ring it has lost its membership and the
    join must go elsewhere. A ``new`` id already in the ring, alive or dead,
    is not inserted again (RabbitMQ issue 972: during partial partitions
    inconsistent views made a member add a joiner twice); the group comes
    back unchanged. Ids name one incarnation of a member, so a dead id never
    legitimately rejoins.
    """

    operation: ClassVar[str] = "record_new_member"

    left: MemberId
    new: MemberId

    def apply(self, group: Group | None, name: str) -> Group | LostMembership:
        """The group to store, or why ``left`` cannot add anyone.

        ``name`` only labels the :class:`LostMembership` when ``group`` is
        None (the row is missing); the same holds for the classes below.
        """
        if group is None:
            return _missing(name)
        left, new = self.left, self.new
        if not group.is_alive(left):
            return _not_alive(group, left, "left neighbour")
        if new in group:
            return group
        at = group.ids.index(left) + 1
        members = (*group.members[:at], GroupMember(new), *group.members[at:])
        return Group(name=group.name, version=group.version + 1, members=members)


@attrs.frozen
class RecordDead:
    """Mark ``member`` dead in the ring, as seen by ``self_id``.

    With ``verify`` (a member handling a DOWN of its neighbour), ``self_id``
    must itself still be alive in the ring: a member others have recorded
    dead must stop rather than go on editing a ring it is no longer part of.
    Without it (a joiner whose chosen left turned out dead, and which is not
    in the ring yet) only the group has to exist. A member that is already
    marked dead, or not in the ring, is left as it is, with no new version.
    """

    operation: ClassVar[str] = "record_dead_member"

    self_id: MemberId
    member: MemberId
    verify: bool = True

    def apply(self, group: Group | None, name: str) -> Group | LostMembership:
        """The group to store, or why ``self_id`` may not change it."""
        if group is None:
            return _missing(name)
        if self.verify and not group.is_alive(self.self_id):
            return _not_alive(group, self.self_id, "member")
        member = self.member
        if not group.is_alive(member):
            return group
        members = tuple(
            GroupMember(m.id, dead=True) if m.id == member else m for m in group.members
        )
        return Group(name=group.name, version=group.version + 1, members=members)


@attrs.frozen
class EraseMembers:
    """Remove the dead markers of ``members`` from the ring, as ``self_id`` asks.

    The caller is the member that inherited them and knows nothing they sent
    is still in flight; it must itself be alive in the ring. Only dead
    entries are removed: an id in ``members`` that is alive, or absent, is
    left alone, and if nothing was removed the group comes back unchanged.
    """

    operation: ClassVar[str] = "erase_members"

    self_id: MemberId
    members: tuple[MemberId, ...]

    def apply(self, group: Group | None, name: str) -> Group | LostMembership:
        """The group to store, or why ``self_id`` may not change it."""
        if group is None:
            return _missing(name)
        if not group.is_alive(self.self_id):
            return _not_alive(group, self.self_id, "member")
        erase = frozenset(self.members)
        kept = tuple(m for m in group.members if not (m.dead and m.id in erase))
        if len(kept) == len(group.members):
            return group
        return Group(name=group.name, version=group.version + 1, members=kept)


#: Every membership change gm makes. Each has ``apply(group, name)`` and an
#: ``operation`` name; :meth:`GroupStore.transact
#: <trio_gm.store.GroupStore.transact>` takes any of them.
StoreOp = PruneOrCreate | RecordNewMember | RecordDead | EraseMembers
