"""gm's membership changes as pure functions over :class:`Group` values.

Why these live apart from the database: gm's correctness rests on a total
order of membership changes (Lemma 1 in gm.erl's theory of operation). When
B dies while B' joins, exactly one of B' and C must inherit B's in-flight
messages, and a member can only work out which dead members it inherited if
every addition and every death was applied to the ring one after another,
each producing the next view version. The store supplies that order (each
change is a read-modify-write of one row in a SERIALIZABLE transaction); the
functions here say what each change *is*, given the ring read inside that
transaction. They do no I/O, so they can be tested exhaustively, and so a
transaction that is retried after a serialization failure simply calls them
again on the fresh row.

Rules every function follows (from the later gm.erl, RabbitMQ 3.13):

- a real change returns a new group with the version bumped by exactly one;
- no change returns the *same* object it was given (the store then writes
  nothing, and the version stays put);
- a missing group, or a caller that is no longer alive in the ring (others
  recorded it dead during a partition), yields :class:`LostMembership`, a
  result and not an exception (issues 714, 950, 953).
"""

from __future__ import annotations

from collections.abc import Iterable

from .._ids import MemberId
from .model import Group, GroupMember, LostMembership

__all__ = [
    "VERSION_START",
    "add_member_right_of",
    "erase_members",
    "prune_or_create",
    "record_dead",
]

#: The version a group starts at when nobody knows an older one (gm's
#: ``?VERSION_START``).
VERSION_START = 0


def _missing(name: str | None) -> LostMembership:
    if name is None:
        return LostMembership(group="", reason="the group does not exist")
    return LostMembership(group=name, reason=f"group {name!r} does not exist")


def _not_alive(group: Group, member: MemberId, role: str) -> LostMembership:
    where = "marked dead in" if member in group else "not in"
    return LostMembership(
        group=group.name,
        reason=f"{role} {member} is {where} the ring of group {group.name!r} "
        f"(version {group.version})",
    )


def prune_or_create(
    group: Group | None, name: str, self_id: MemberId, min_version: int = VERSION_START
) -> Group:
    """The group a first member joins: the existing one if anyone in it is alive.

    Otherwise (no row, or every recorded member dead) the group is replaced
    by a ring holding only ``self_id``. Its version is never lower than
    ``min_version``, the newest version the member has seen (RabbitMQ bug
    25670: a group recreated at version 0 made members with a newer cached
    view ignore the change), and, when a row exists, always above it, so the
    replacement is a change every reader of the old row can see.
    """
    if group is not None:
        if group.name != name:
            raise ValueError(f"asked for group {name!r} but was given group {group.name!r}")
        if group.alive:
            return group
    version = min_version if group is None else max(min_version, group.version + 1)
    return Group(name=name, version=version, members=(GroupMember(self_id),))


def add_member_right_of(
    group: Group | None, left: MemberId, new: MemberId, *, name: str | None = None
) -> Group | LostMembership:
    """Insert ``new`` just right of ``left``, which must be alive in the ring.

    ``left`` is the member answering the join (gm's ``add_on_right``); if it
    is no longer alive in the stored ring it has lost its membership and the
    join must go elsewhere. A ``new`` id already in the ring, alive or dead,
    is not inserted again (RabbitMQ issue 972: during partial partitions
    inconsistent views made a member add a joiner twice); the group comes
    back unchanged. Ids name one incarnation of a member, so a dead id never
    legitimately rejoins.

    ``name`` only labels the :class:`LostMembership` when ``group`` is None
    (the row is missing); the same holds for the functions below.
    """
    if group is None:
        return _missing(name)
    if not group.is_alive(left):
        return _not_alive(group, left, "left neighbour")
    if new in group:
        return group
    at = group.ids.index(left) + 1
    members = (*group.members[:at], GroupMember(new), *group.members[at:])
    return Group(name=group.name, version=group.version + 1, members=members)


def record_dead(
    group: Group | None,
    self_id: MemberId,
    member: MemberId,
    verify: bool = True,
    *,
    name: str | None = None,
) -> Group | LostMembership:
    """Mark ``member`` dead in the ring, as seen by ``self_id``.

    With ``verify`` (a member handling a DOWN of its neighbour), ``self_id``
    must itself still be alive in the ring: a member others have recorded
    dead must stop rather than go on editing a ring it is no longer part of.
    Without it (a joiner whose chosen left turned out dead, and which is not
    in the ring yet) only the group has to exist. A member that is already
    marked dead, or not in the ring, is left as it is, with no new version.
    """
    if group is None:
        return _missing(name)
    if verify and not group.is_alive(self_id):
        return _not_alive(group, self_id, "member")
    if not group.is_alive(member):
        return group
    members = tuple(GroupMember(m.id, dead=True) if m.id == member else m for m in group.members)
    return Group(name=group.name, version=group.version + 1, members=members)


def erase_members(
    group: Group | None,
    self_id: MemberId,
    members: Iterable[MemberId],
    *,
    name: str | None = None,
) -> Group | LostMembership:
    """Remove the dead markers of ``members`` from the ring, as ``self_id`` asks.

    The caller is the member that inherited them and knows nothing they sent
    is still in flight; it must itself be alive in the ring. Only dead
    entries are removed: an id in ``members`` that is alive, or absent, is
    left alone, and if nothing was removed the group comes back unchanged.
    """
    if group is None:
        return _missing(name)
    if not group.is_alive(self_id):
        return _not_alive(group, self_id, "member")
    erase = frozenset(members)
    kept = tuple(m for m in group.members if not (m.dead and m.id in erase))
    if len(kept) == len(group.members):
        return group
    return Group(name=group.name, version=group.version + 1, members=kept)
