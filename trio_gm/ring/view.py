"""Views: the ring as one member sees it, built from the stored group.

A view maps every alive member to its left and right alive neighbours and
to its *aliases*: the dead members it has inherited. A dead member is
inherited by the nearest alive member downstream of it (to its right): that
member knows at least as much as anyone about what the dead one published,
so it takes over the dead member's role of turning its publications into
acknowledgements when they come round. Each dead member has exactly one
heir, because the view is a function of one stored group version and all
changes to the group are totally ordered (Lemma 1).

Everything here is pure: plain functions over frozen values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from .._ids import MemberId
from ..store import Group


@attrs.frozen
class ViewMember:
    id: MemberId
    left: MemberId
    right: MemberId
    aliases: frozenset[MemberId] = frozenset()


@attrs.frozen
class View:
    """One member's view of the ring at ``version``."""

    version: int
    members: Mapping[MemberId, ViewMember]
    #: Alive members and the dead ones they still carry as aliases.
    known: frozenset[MemberId] = attrs.field(init=False)

    @known.default
    def _known(self) -> frozenset[MemberId]:
        known: set[MemberId] = set(self.members)
        for member in self.members.values():
            known.update(member.aliases)
        return frozenset(known)

    @property
    def alive(self) -> list[MemberId]:
        return sorted(self.members)

    def is_alias(self, member: MemberId, of: MemberId) -> bool:
        """Whether ``of`` speaks for ``member``: itself, or a dead member it inherited."""
        return member == of or member in self.members[of].aliases

    def __getitem__(self, member: MemberId) -> ViewMember:
        return self.members[member]


def group_to_view(group: Group) -> View:
    """Build the view of ``group``; it must have at least one alive member."""
    alive = group.alive
    if not alive:
        raise ValueError(f"group {group.name!r} has no alive member: it has no view")
    count = len(alive)
    aliases = _aliases(group)
    members = {
        member: ViewMember(
            id=member,
            left=alive[(i - 1) % count],
            right=alive[(i + 1) % count],
            aliases=aliases.get(member, frozenset()),
        )
        for i, member in enumerate(alive)
    }
    return View(version=group.version, members=members)


def _aliases(group: Group) -> dict[MemberId, frozenset[MemberId]]:
    """Each dead member goes to the first alive member after it, wrapping round."""
    ring = list(group.members)
    # Rotate so the ring ends with an alive member: then every run of dead
    # members has an alive member after it without wrapping.
    while ring[-1].dead:
        ring.insert(0, ring.pop())
    result: dict[MemberId, frozenset[MemberId]] = {}
    dead: list[MemberId] = []
    for entry in ring:
        if entry.dead:
            dead.append(entry.id)
        elif dead:
            result[entry.id] = frozenset(dead)
            dead = []
    return result


def births_and_deaths(
    old: Iterable[MemberId], new: Iterable[MemberId]
) -> tuple[list[MemberId], list[MemberId]]:
    """Members in ``new`` but not ``old`` (births) and the reverse (deaths), sorted."""
    old_set, new_set = set(old), set(new)
    return sorted(new_set - old_set), sorted(old_set - new_set)
