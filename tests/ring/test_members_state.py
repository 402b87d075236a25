"""The members state against a literal port of gm.erl's list-based functions.

gm keeps a publisher's pending acknowledgements as a queue of ``{Num, Msg}``
tuples, an activity's publications as such a list and its acknowledgements as
a list of numbers. We keep runs (``first`` + messages, a count + ``ack_last``).
The reference below is gm written the simplest way in Python, on gm's
representation: ``find_prefix`` / ``find_common`` / ``find_prefix_common_suffix``
(``find_common`` in its final form, with the RabbitMQ issue 749 clauses),
``calculate_activity`` and the delta of ``handle_msg({catchup, ...})``.

The property tests only feed both sides *reachable* states: directly generated
windows that respect the protocol's invariants, and whole runs of a small ring
(publish, deliver, kill, join, erase) in which every member keeps gm's state and
ours side by side and every step must agree.

Two deliberate deviations from gm.erl are encoded in the reference, each in one
place, and pinned down by example tests (``# Deviations from gm``):

* at a catch-up, the ``last_ack`` of a publisher the member speaks for is
  :func:`gm_catchup_alias_last_ack` instead of gm's plain copy of the left's
  (:func:`gm_literal_alias_last_ack`): it never goes backwards and counts what
  the left has retired as acknowledged (the explorer's ``alias-ack-lost``);
* an activity entry for a publisher the view no longer knows (erased) is
  dropped, not recreated blank and passed on (:func:`gm_drop_erased`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_gm._ids import MemberId
from trio_gm.ring.members_state import (
    MembersState,
    PublisherState,
    build_members_state,
    calculate_activity,
    catchup_entries,
    erasable_aliases,
    has_pending,
    prepare_snapshot,
    remove_erased_members,
    state_for,
)
from trio_gm.ring.messages import ActivityEntry, MemberSnapshot
from trio_gm.ring.view import View, group_to_view
from trio_gm.store.model import Group, GroupMember

DETERMINISTIC = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def mid(serial: int) -> MemberId:
    return MemberId("n", serial)


def msg(publisher: MemberId, num: int) -> str:
    return f"{publisher.serial}:{num}"


def msgs(publisher: MemberId, first: int, last: int) -> list[str]:
    """The messages ``publisher`` published numbered ``first`` to ``last``."""
    return [msg(publisher, n) for n in range(first, last + 1)]


# =============================================================================
# Reference: gm.erl, literally, on gm's representation
# =============================================================================

Pub = tuple[int, str]  # {PubNum, Msg}
GmQueue = tuple[Pub, ...]  # queue:queue({PubNum, Msg})
GmEntry = tuple[MemberId, tuple[Pub, ...], tuple[int, ...]]  # {Id, Pubs, Acks}


class GmCrash(Exception):
    """gm would have crashed here (a failed match or assertion)."""


@dataclass(frozen=True)
class GmMember:
    """-record(member, { pending_ack, last_pub, last_ack })."""

    pending_ack: GmQueue
    last_pub: int
    last_ack: int


GmState = dict[MemberId, GmMember]
BLANK = GmMember((), -1, -1)  # blank_member()


class Drops:
    """How often the issue-749 clauses of ``find_common`` dropped a value.

    On reachable states they never should: the simulation asserts it stays 0.
    """

    count = 0


def find_prefix(a: GmQueue, b: GmQueue, prefix: GmQueue) -> tuple[GmQueue, GmQueue]:
    """Returns the elements of A that occur before the first element of B, plus the rest of A."""
    if a and b and a[0] == b[0]:
        return prefix, a
    if not a and b:
        return prefix, a
    if a and b and a[0][0] < b[0][0]:
        return find_prefix(a[1:], b, (*prefix, a[0]))
    if not b:
        return a, prefix  # Prefix will be empty here
    raise GmCrash(f"find_prefix: no case clause for {a[0]} and {b[0]}")


def find_common(a: GmQueue, b: GmQueue, common: GmQueue) -> tuple[GmQueue, GmQueue]:
    """A should be a prefix of B. Returns the commonality plus the remainder of B."""
    if a and b and a[0] == b[0]:
        return find_common(a[1:], b[1:], (*common, a[0]))
    if not a:
        return common, b
    if b:  # Drop value from B.
        Drops.count += 1
        return find_common(a, b[1:], common)
    Drops.count += 1  # Drop value from A.
    return find_common(a[1:], b, common)


def find_prefix_common_suffix(a: GmQueue, b: GmQueue) -> tuple[GmQueue, GmQueue, GmQueue]:
    prefix, a1 = find_prefix(a, b, ())
    common, suffix = find_common(a1, b, ())
    return prefix, common, suffix


def gm_apply_acks(acks: Sequence[int], pubs: GmQueue) -> GmQueue:
    if not acks:
        return pubs
    if len(acks) > len(pubs):
        raise GmCrash("queue:split: badarg")
    return pubs[len(acks) :]


def gm_join_pubs(q: GmQueue, pubs: Sequence[Pub]) -> GmQueue:
    return (*q, *pubs)


def gm_last_ack(acks: Sequence[int], la: int) -> int:
    if not acks:
        return la
    if not acks[-1] > la:
        raise GmCrash(f"last_ack assertion: {acks[-1]} > {la}")
    return acks[-1]


def gm_alias_last_ack(acks: Sequence[int], la: int) -> int:
    """DEVIATION: an alias's last_ack on acks coming back round.

    gm asserts (:func:`gm_last_ack`) that acks arriving back are newer than
    ``last_ack``. Once a catch-up may move an alias's ``last_ack`` on to its
    left's retired frontier (:func:`gm_catchup_alias_last_ack`), an ack it
    counted that way can still be on its way and arrive afterwards: it is
    old news, and ``last_ack`` keeps the larger value.
    """
    if not acks:
        return la
    return max(acks[-1], la)


def gm_last_pub(pubs: Sequence[Pub], lp: int) -> int:
    if not pubs:
        return lp
    if not pubs[-1][0] > lp:
        raise GmCrash(f"last_pub assertion: {pubs[-1][0]} > {lp}")
    return pubs[-1][0]


def gm_is_member_alias(member: MemberId, self_id: MemberId, aliases: frozenset[MemberId]) -> bool:
    return member == self_id or member in aliases


def activity_cons(
    member: MemberId, pubs: Sequence[Pub], acks: Sequence[int], tail: list[GmEntry]
) -> list[GmEntry]:
    if not pubs and not acks:
        return tail
    return [*tail, (member, tuple(pubs), tuple(acks))]


def gm_drop_erased(activity: Sequence[GmEntry], known: frozenset[MemberId] | None) -> list[GmEntry]:
    """DEVIATION: the entries of ``activity`` about publishers in ``known``.

    gm's calculate_activity takes every entry, and one about a publisher
    erased from the view recreates it blank and is passed on. But an erased
    publisher's heir saw its last publication acknowledged: nothing about it
    is in flight any more, and a stale entry (an ack still on the way when
    the erasure came) would go round the ring for ever (the loop of RabbitMQ
    PR 1431, found again by the schedule explorer). We drop it. ``known``
    None is gm.erl literally (nothing dropped).
    """
    if known is None:
        return list(activity)
    return [entry for entry in activity if entry[0] in known]


def gm_calculate_activity(
    members_state: GmState,
    activity: Sequence[GmEntry],
    self_id: MemberId,
    aliases: frozenset[MemberId],
    *,
    known: frozenset[MemberId] | None,
    literal: bool = False,
) -> tuple[GmState, list[GmEntry], list[int]]:
    """gm's calculate_activity: new state, outgoing activity, own pubs acked (confirms).

    ``known`` is the view's known publishers (alive, and dead ones still
    inherited): entries about any other are dropped (:func:`gm_drop_erased`,
    our deviation); None drops nothing. An alias takes returning acks with
    :func:`gm_alias_last_ack` (our deviation) unless ``literal``.
    """
    alias_last_ack = gm_last_ack if literal else gm_alias_last_ack
    ms = dict(members_state)
    out: list[GmEntry] = []
    confirmed: list[int] = []
    for member_id, pubs, acks in gm_drop_erased(activity, known):
        member = ms.get(member_id, BLANK)
        if gm_is_member_alias(member_id, self_id, aliases):
            to_ack, pa1 = find_common(tuple(pubs), member.pending_ack, ())
            la1 = alias_last_ack(acks, member.last_ack)
            ack_nums = [num for num, _ in to_ack]
            if member_id == self_id:
                confirmed.extend(ack_nums)
            ms[member_id] = replace(member, pending_ack=pa1, last_ack=la1)
            out = activity_cons(member_id, [], ack_nums, out)
        else:
            pa1 = gm_apply_acks(acks, gm_join_pubs(member.pending_ack, pubs))
            la1 = gm_last_ack(acks, member.last_ack)
            lp1 = gm_last_pub(pubs, member.last_pub)
            ms[member_id] = GmMember(pa1, lp1, la1)
            out = activity_cons(member_id, pubs, acks, out)
    return ms, out, confirmed


def gm_literal_alias_last_ack(member: GmMember, left: GmMember) -> int:
    """gm.erl: at a catch-up an alias takes its left's last_ack as it is."""
    return left.last_ack


def gm_catchup_alias_last_ack(member: GmMember, left: GmMember) -> int:
    """DEVIATION: an alias's last_ack after a catch-up from ``left``.

    gm takes the left's ``last_ack`` (:func:`gm_literal_alias_last_ack`).
    But the left may hold a stale copy of the entry (a joiner copies its
    left's state, ``last_ack`` behind ``last_pub``), while the
    acknowledgements that would have moved ours on died with a member: then
    the alias's ``last_ack`` stays behind its ``last_pub`` for ever and the
    dead member is never erased (the schedule explorer's ``alias-ack-lost``).

    So: never go backwards (keep our own if it is larger), and count what
    the left has *retired* as acknowledged, since acks carried it from us all
    the way round to the left: its first pending number - 1, or its
    ``last_pub`` with nothing pending; never beyond our own ``last_pub``.
    """
    retired = left.pending_ack[0][0] - 1 if left.pending_ack else left.last_pub
    return max(member.last_ack, left.last_ack, min(retired, member.last_pub))


AliasLastAck = Callable[[GmMember, GmMember], int]


def gm_catchup(
    members_state: GmState,
    members_state_left: GmState,
    self_id: MemberId,
    aliases: frozenset[MemberId],
    *,
    alias_last_ack: AliasLastAck = gm_catchup_alias_last_ack,
) -> tuple[GmState, list[GmEntry]]:
    """The delta of handle_msg({catchup, Left, MembersStateLeft}) once we have a state.

    With our deviation for an alias's ``last_ack`` by default; pass
    ``alias_last_ack=gm_literal_alias_last_ack`` for gm.erl literally.
    """
    ms = dict(members_state)
    activity: list[GmEntry] = []
    for member_id in sorted(set(members_state) | set(members_state_left)):
        left = members_state_left.get(member_id, BLANK)
        member = ms.get(member_id, BLANK)
        if gm_is_member_alias(member_id, self_id, aliases):
            _acks_in_flight, pubs, _pa1 = find_prefix_common_suffix(
                left.pending_ack, member.pending_ack
            )
            ms[member_id] = replace(member, last_ack=alias_last_ack(member, left))
            activity = activity_cons(member_id, pubs, [], activity)
        else:
            acks, _common, pubs = find_prefix_common_suffix(member.pending_ack, left.pending_ack)
            ms[member_id] = member
            activity = activity_cons(member_id, pubs, [num for num, _ in acks], activity)
    return ms, activity


def gm_remove_erased_members(members_state: GmState, known: Iterable[MemberId]) -> GmState:
    return {member: members_state.get(member, BLANK) for member in known}


def gm_erasable(
    members_state: GmState, self_id: MemberId, aliases: frozenset[MemberId]
) -> list[MemberId]:
    """The ids maybe_erase_aliases would erase (can_erase_view_member)."""
    erasable = []
    for member_id in aliases:
        member = members_state.get(member_id, BLANK)
        if member_id != self_id and member.last_pub == member.last_ack:
            erasable.append(member_id)
    return sorted(erasable)


# =============================================================================
# Between the two representations
# =============================================================================


def as_gm_member(state: PublisherState) -> GmMember:
    pending = tuple((state.first + i, m) for i, m in enumerate(state.pending))
    return GmMember(pending, state.last_pub, state.last_ack)


def as_gm_state(members_state: MembersState) -> GmState:
    return {member: as_gm_member(state) for member, state in members_state.items()}


def as_gm_entry(entry: ActivityEntry) -> GmEntry:
    pubs = tuple((entry.first + i, m) for i, m in enumerate(entry.pubs))
    acks = tuple(range(entry.ack_last - entry.acks + 1, entry.ack_last + 1))
    return entry.publisher, pubs, acks


def as_gm_activity(entries: Iterable[ActivityEntry]) -> list[GmEntry]:
    return [as_gm_entry(e) for e in entries]


def as_entry(entry: GmEntry) -> ActivityEntry:
    publisher, pubs, acks = entry
    assert [n for n, _ in pubs] == list(range(pubs[0][0], pubs[0][0] + len(pubs))) if pubs else True
    assert list(acks) == list(range(acks[0], acks[0] + len(acks))) if acks else True
    return ActivityEntry(
        publisher,
        first=pubs[0][0] if pubs else 0,
        pubs=tuple(m for _, m in pubs),
        acks=len(acks),
        ack_last=acks[-1] if acks else -1,
    )


def snapshot_of(member: GmMember) -> MemberSnapshot:
    first = member.pending_ack[0][0] if member.pending_ack else member.last_ack + 1
    return MemberSnapshot(
        first, tuple(m for _, m in member.pending_ack), member.last_pub, member.last_ack
    )


def window(publisher: MemberId, first: int, end: int, last_ack: int) -> GmMember:
    """Pending publications ``first`` to ``end - 1``; seen through ``end - 1``."""
    return GmMember(tuple((n, msg(publisher, n)) for n in range(first, end)), end - 1, last_ack)


def ours_from_gm(members_state: GmState) -> MembersState:
    return {
        member: PublisherState.from_snapshot(snapshot_of(state))
        for member, state in members_state.items()
    }


# =============================================================================
# A ring to take examples from: L, D (dead), M, P, Q; M speaks for D.
# =============================================================================

L, D, M, P, Q = (mid(i) for i in range(1, 6))
VIEW = group_to_view(
    Group(
        "g",
        3,
        (GroupMember(L), GroupMember(D, dead=True), GroupMember(M), GroupMember(P), GroupMember(Q)),
    )
)


def pstate(
    publisher: MemberId, first: int, last: int, last_pub: int, last_ack: int
) -> PublisherState:
    return PublisherState(first, msgs(publisher, first, last), last_pub, last_ack)


def snap(
    publisher: MemberId, first: int, last: int, last_pub: int, last_ack: int
) -> MemberSnapshot:
    return MemberSnapshot(first, tuple(msgs(publisher, first, last)), last_pub, last_ack)


def pending_of(state: PublisherState) -> list[tuple[int, str]]:
    return [(state.first + i, m) for i, m in enumerate(state.pending)]


def check_against_gm_catchup(
    mine: MembersState, left: dict[MemberId, MemberSnapshot], self_id: MemberId, view: View
) -> tuple[list[ActivityEntry], list[ActivityEntry], int]:
    """Run our catch-up and activity, and gm's, on the same states; they must agree."""
    gm_mine = as_gm_state(mine)
    gm_left = {
        member: GmMember(
            tuple((s.pending_first + i, m) for i, m in enumerate(s.pending)), s.last_pub, s.last_ack
        )
        for member, s in left.items()
    }
    aliases = view[self_id].aliases
    gm_after_catchup, gm_entries = gm_catchup(gm_mine, gm_left, self_id, aliases)
    gm_after, gm_out, gm_confirmed = gm_calculate_activity(
        gm_after_catchup, gm_entries, self_id, aliases, known=view.known
    )
    entries = catchup_entries(mine, left, self_id, view)
    assert as_gm_activity(entries) == gm_entries
    assert as_gm_state(mine) == gm_after_catchup
    out, own_acked = calculate_activity(mine, entries, self_id, view)
    assert as_gm_activity(out) == gm_out
    assert as_gm_state(mine) == gm_after
    assert own_acked == (gm_confirmed[-1] if gm_confirmed else -1)
    return entries, out, own_acked


# =============================================================================
# Examples
# =============================================================================


def test_example_view_has_m_speaking_for_d() -> None:
    assert VIEW[M].aliases == frozenset({D})
    assert VIEW[M].left == L


def test_catchup_after_death_recovers_missed_acks_prefix_and_missed_pubs_suffix() -> None:
    # M has seen P's 3..5 and acked up to 2. Its new left L has acked up to 4
    # (acks 3, 4 never reached M) and seen 6, 7 (publications lost with D).
    mine = {P: pstate(P, 3, 5, last_pub=5, last_ack=2)}
    left = {P: snap(P, 5, 7, last_pub=7, last_ack=4)}
    entries, out, own_acked = check_against_gm_catchup(mine, left, M, VIEW)
    assert entries == [ActivityEntry(P, first=6, pubs=(msg(P, 6), msg(P, 7)), acks=2, ack_last=4)]
    assert out == entries  # passed on right unchanged
    assert own_acked == -1
    assert pending_of(mine[P]) == [(5, msg(P, 5)), (6, msg(P, 6)), (7, msg(P, 7))]
    assert (mine[P].last_pub, mine[P].last_ack) == (7, 4)


def test_catchup_from_a_left_with_nothing_pending_acks_everything() -> None:
    mine = {P: pstate(P, 3, 5, last_pub=5, last_ack=2)}
    left = {P: MemberSnapshot(8, (), 7, 7)}  # 3..7 all acked at L; 6, 7 never seen by M
    entries, _out, _ = check_against_gm_catchup(mine, left, M, VIEW)
    assert entries == [ActivityEntry(P, first=8, pubs=(), acks=3, ack_last=5)]
    assert mine[P].pending == []
    assert (mine[P].last_pub, mine[P].last_ack) == (5, 5)


def test_catchup_with_nothing_missed_is_silent() -> None:
    mine = {P: pstate(P, 3, 5, last_pub=5, last_ack=2), Q: PublisherState()}
    left = {P: snap(P, 3, 5, last_pub=5, last_ack=2)}
    entries, out, _ = check_against_gm_catchup(mine, left, M, VIEW)
    assert entries == []
    assert out == []
    assert pending_of(mine[P]) == [(3, msg(P, 3)), (4, msg(P, 4)), (5, msg(P, 5))]


def test_catchup_for_a_publisher_only_the_left_knows() -> None:
    mine: MembersState = {}
    left = {Q: snap(Q, 2, 3, last_pub=3, last_ack=1)}
    entries, _out, _ = check_against_gm_catchup(mine, left, M, VIEW)
    assert entries == [ActivityEntry(Q, first=2, pubs=(msg(Q, 2), msg(Q, 3)))]
    assert pending_of(mine[Q]) == [(2, msg(Q, 2)), (3, msg(Q, 3))]
    assert (mine[Q].last_pub, mine[Q].last_ack) == (3, -1)


@pytest.mark.parametrize("publisher", [D, M], ids=["alias", "self"])
def test_catchup_for_an_alias_turns_the_common_part_into_acks(publisher: MemberId) -> None:
    # M holds 3..7 of the publisher's pubs; L holds 1..5 (acks 1, 2 are still
    # on their way to it). 3..5 have been all the way round: they come back as
    # publications and become acknowledgements; L's last_ack is taken over.
    mine = {publisher: pstate(publisher, 3, 7, last_pub=7, last_ack=-1)}
    left = {publisher: snap(publisher, 1, 5, last_pub=5, last_ack=0)}
    entries = catchup_entries(mine, left, M, VIEW)
    assert entries == [
        ActivityEntry(
            publisher, first=3, pubs=(msg(publisher, 3), msg(publisher, 4), msg(publisher, 5))
        )
    ]
    assert mine[publisher].last_ack == 0
    out, own_acked = calculate_activity(mine, entries, M, VIEW)
    assert out == [ActivityEntry(publisher, acks=3, ack_last=5)]
    assert own_acked == (5 if publisher == M else -1)
    assert pending_of(mine[publisher]) == [(6, msg(publisher, 6)), (7, msg(publisher, 7))]
    assert (mine[publisher].last_pub, mine[publisher].last_ack) == (7, 0)
    # And gm agrees on the same input.
    mine = {publisher: pstate(publisher, 3, 7, last_pub=7, last_ack=-1)}
    check_against_gm_catchup(mine, left, M, VIEW)


def test_catchup_for_an_alias_the_left_has_not_seen_yet() -> None:
    # L has none of D's pubs pending any more than M: nothing came round.
    mine = {D: pstate(D, 4, 6, last_pub=6, last_ack=3)}
    left = {D: MemberSnapshot(4, (), 3, 3)}
    entries, out, _ = check_against_gm_catchup(mine, left, M, VIEW)
    assert entries == []
    assert out == []
    assert pending_of(mine[D]) == [(4, msg(D, 4)), (5, msg(D, 5)), (6, msg(D, 6))]
    assert mine[D].last_ack == 3


def test_activity_at_the_publisher_turns_returning_pubs_into_acks() -> None:
    members: MembersState = {
        M: pstate(M, 0, 2, last_pub=2, last_ack=-1),
        P: pstate(P, 0, 0, last_pub=0, last_ack=-1),
    }
    out, own_acked = calculate_activity(
        members,
        [
            ActivityEntry(M, first=0, pubs=(msg(M, 0), msg(M, 1))),
            ActivityEntry(P, first=1, pubs=(msg(P, 1),), acks=1, ack_last=0),
        ],
        M,
        VIEW,
    )
    assert out == [
        ActivityEntry(M, acks=2, ack_last=1),
        ActivityEntry(P, first=1, pubs=(msg(P, 1),), acks=1, ack_last=0),
    ]
    assert own_acked == 1
    assert pending_of(members[M]) == [(2, msg(M, 2))]
    assert members[M].last_ack == -1  # retired only when the acks come back
    assert pending_of(members[P]) == [(1, msg(P, 1))]
    assert (members[P].last_pub, members[P].last_ack) == (1, 0)

    # The acks come back round: recorded, not sent on, nothing more confirmed.
    out, own_acked = calculate_activity(members, [ActivityEntry(M, acks=2, ack_last=1)], M, VIEW)
    assert out == []
    assert own_acked == -1
    assert members[M].last_ack == 1
    assert pending_of(members[M]) == [(2, msg(M, 2))]


def test_activity_for_an_alias_acks_without_confirming() -> None:
    members: MembersState = {D: pstate(D, 4, 5, last_pub=5, last_ack=3)}
    out, own_acked = calculate_activity(
        members, [ActivityEntry(D, first=4, pubs=(msg(D, 4),))], M, VIEW
    )
    assert out == [ActivityEntry(D, acks=1, ack_last=4)]
    assert own_acked == -1
    assert pending_of(members[D]) == [(5, msg(D, 5))]


def test_unmatched_pubs_and_acks_at_an_alias_are_dropped() -> None:
    members: MembersState = {D: pstate(D, 3, 4, last_pub=4, last_ack=2)}
    # Pubs nobody here is waiting for: beyond the pending run, and before it.
    for entry in (
        ActivityEntry(D, first=7, pubs=(msg(D, 7), msg(D, 8))),
        ActivityEntry(D, first=1, pubs=(msg(D, 1), msg(D, 2))),
        ActivityEntry(D, acks=2, ack_last=1),  # acks older than last_ack
    ):
        out, own_acked = calculate_activity(members, [entry], M, VIEW)
        assert out == []
        assert own_acked == -1
        assert pending_of(members[D]) == [(3, msg(D, 3)), (4, msg(D, 4))]
        assert (members[D].last_pub, members[D].last_ack) == (4, 2)
    # Overlapping: only the pending part is acked, the rest dropped.
    out, _ = calculate_activity(
        members, [ActivityEntry(D, first=4, pubs=(msg(D, 4), msg(D, 5)))], M, VIEW
    )
    assert out == [ActivityEntry(D, acks=1, ack_last=4)]
    assert members[D].pending == []
    # With nothing pending at all, returning pubs are dropped too.
    out, _ = calculate_activity(members, [ActivityEntry(D, first=4, pubs=(msg(D, 4),))], M, VIEW)
    assert out == []


def test_unmatched_acks_at_a_non_alias_retire_nothing() -> None:
    members: MembersState = {P: PublisherState(6, [], last_pub=5, last_ack=5)}
    entry = ActivityEntry(P, acks=2, ack_last=5)
    out, _ = calculate_activity(members, [entry], M, VIEW)
    assert out == [entry]
    assert members[P].pending == []
    assert (members[P].first, members[P].last_pub, members[P].last_ack) == (6, 5, 5)


def test_duplicate_pubs_are_skipped() -> None:
    members: MembersState = {P: pstate(P, 4, 5, last_pub=5, last_ack=3)}
    calculate_activity(members, [ActivityEntry(P, first=4, pubs=tuple(msgs(P, 4, 6)))], M, VIEW)
    assert pending_of(members[P]) == [(4, msg(P, 4)), (5, msg(P, 5)), (6, msg(P, 6))]
    assert members[P].last_pub == 6
    # Entirely a duplicate: nothing changes, last_pub does not go back.
    calculate_activity(members, [ActivityEntry(P, first=5, pubs=(msg(P, 5),))], M, VIEW)
    assert pending_of(members[P]) == [(4, msg(P, 4)), (5, msg(P, 5)), (6, msg(P, 6))]
    assert members[P].last_pub == 6
    # With nothing pending: the run restarts after last_pub.
    members = {P: PublisherState(6, [], last_pub=5, last_ack=5)}
    calculate_activity(members, [ActivityEntry(P, first=4, pubs=tuple(msgs(P, 4, 7)))], M, VIEW)
    assert pending_of(members[P]) == [(6, msg(P, 6)), (7, msg(P, 7))]
    assert members[P].last_pub == 7


def test_join_pubs_and_retire_through() -> None:
    state = PublisherState()
    assert state.pending_last == -1
    assert state.join_pubs(0, ["a", "b", "c"]) == 2
    assert state.join_pubs(1, ["b", "c"]) == 2  # duplicate
    state.retire_through(0)
    assert (state.first, state.pending, state.pending_last) == (1, ["b", "c"], 2)
    state.retire_through(0)  # already retired
    assert (state.first, state.pending) == (1, ["b", "c"])
    state.retire_through(9)
    assert (state.first, state.pending, state.pending_last) == (3, [], 2)


def test_erasable_aliases_only_when_last_pub_equals_last_ack() -> None:
    view = group_to_view(
        Group(
            "g",
            1,
            (
                GroupMember(L),
                GroupMember(D, dead=True),
                GroupMember(P, dead=True),
                GroupMember(Q, dead=True),
                GroupMember(M),
            ),
        )
    )
    assert view[M].aliases == frozenset({D, P, Q})
    members: MembersState = {
        D: PublisherState(5, [], last_pub=4, last_ack=4),  # done
        P: pstate(P, 4, 4, last_pub=4, last_ack=3),  # 4 still in flight
        M: PublisherState(5, [], last_pub=4, last_ack=4),  # self: never an alias
        # Q: no state at all: nothing known in flight
    }
    assert erasable_aliases(members, M, view) == [D, Q]
    members[P].last_ack = 4
    members[P].retire_through(4)
    assert erasable_aliases(members, M, view) == [D, P, Q]
    members[D].last_pub = 5
    assert erasable_aliases(members, M, view) == [P, Q]
    assert erasable_aliases(members, L, view) == []  # L inherits nobody


def test_remove_erased_members_keeps_exactly_the_known() -> None:
    view = group_to_view(Group("g", 1, (GroupMember(L), GroupMember(D, dead=True), GroupMember(M))))
    kept_l = pstate(L, 1, 2, last_pub=2, last_ack=0)
    kept_d = PublisherState(0, [], 4, 4)
    members: MembersState = {L: kept_l, D: kept_d, P: PublisherState(), Q: pstate(Q, 0, 0, 0, -1)}
    result = remove_erased_members(members, view)
    assert set(result) == set(view.known) == {L, D, M}
    assert result[L] is kept_l
    assert result[D] is kept_d
    assert (result[M].pending, result[M].last_pub, result[M].last_ack) == ([], -1, -1)


def test_has_pending() -> None:
    assert not has_pending(None)
    assert not has_pending({})
    assert not has_pending({P: PublisherState(3, [], 2, 2), Q: PublisherState()})
    assert has_pending({P: PublisherState(3, [], 2, 2), Q: pstate(Q, 0, 0, 0, -1)})


def test_snapshots_round_trip() -> None:
    members: MembersState = {Q: pstate(Q, 2, 3, 3, 1), L: PublisherState(4, [], 3, 3)}
    snapshot = prepare_snapshot(members)
    assert snapshot == (
        (L, MemberSnapshot(4, (), 3, 3)),
        (Q, MemberSnapshot(2, (msg(Q, 2), msg(Q, 3)), 3, 1)),
    )
    rebuilt = build_members_state(snapshot)
    assert as_gm_state(rebuilt) == as_gm_state(members)
    rebuilt[Q].pending.append("x")
    assert members[Q].pending == [msg(Q, 2), msg(Q, 3)]  # a copy, not shared


def test_reference_find_prefix_common_suffix() -> None:
    def q(*nums: int) -> GmQueue:
        return tuple((n, f"m{n}") for n in nums)

    assert find_prefix_common_suffix(q(3, 4, 5), q(5, 6, 7)) == (q(3, 4), q(5), q(6, 7))
    assert find_prefix_common_suffix(q(3, 4), q()) == (q(3, 4), q(), q())
    assert find_prefix_common_suffix(q(), q(1, 2)) == (q(), q(), q(1, 2))
    assert find_prefix_common_suffix(q(1, 2), q(4, 5)) == (q(1, 2), q(), q(4, 5))
    with pytest.raises(GmCrash):
        find_prefix(q(5), q(3), ())


# =============================================================================
# Deviations from gm
# =============================================================================


def test_alias_last_ack_never_goes_back_at_a_catchup() -> None:
    # M speaks for D and has seen D's acks through 3 come back; its new left
    # L still holds an older state (acks through 1 only, 2..5 pending).
    mine = {D: pstate(D, 4, 5, last_pub=5, last_ack=3)}
    left = {D: snap(D, 2, 5, last_pub=5, last_ack=1)}
    gm_after, _ = gm_catchup(
        as_gm_state(mine),
        {D: window(D, 2, 6, 1)},
        M,
        VIEW[M].aliases,
        alias_last_ack=gm_literal_alias_last_ack,
    )
    assert gm_after[D].last_ack == 1  # gm.erl goes back to the left's
    entries, out, _ = check_against_gm_catchup(mine, left, M, VIEW)
    assert entries == [ActivityEntry(D, first=4, pubs=(msg(D, 4), msg(D, 5)))]
    assert out == [ActivityEntry(D, acks=2, ack_last=5)]
    assert mine[D].pending == []
    assert (mine[D].last_pub, mine[D].last_ack) == (5, 3)  # ours does not


def test_the_lefts_retired_frontier_counts_as_acknowledged() -> None:
    # alias-ack-lost: M speaks for D and retired all of D's publications; the
    # acks for 4 and 5 died with a member on their way back to it. Its new
    # left holds a stale copy of the entry (a joiner copied it): retired
    # through 5 too, last_ack 3. With gm's last_ack, D is never erasable.
    mine = {D: PublisherState(6, [], last_pub=5, last_ack=3)}
    left = {D: MemberSnapshot(6, (), 5, 3)}
    literal, _ = gm_catchup(
        as_gm_state(mine),
        {D: window(D, 6, 6, 3)},
        M,
        VIEW[M].aliases,
        alias_last_ack=gm_literal_alias_last_ack,
    )
    assert gm_erasable(literal, M, VIEW[M].aliases) == []
    entries, out, _ = check_against_gm_catchup(mine, left, M, VIEW)
    assert entries == out == []
    assert (mine[D].last_pub, mine[D].last_ack) == (5, 5)
    assert erasable_aliases(mine, M, VIEW) == [D]

    # With publications still pending at the left, up to just before them.
    mine = {D: pstate(D, 5, 5, last_pub=5, last_ack=3)}
    left = {D: snap(D, 5, 5, last_pub=5, last_ack=3)}
    entries, out, _ = check_against_gm_catchup(mine, left, M, VIEW)
    assert out == [ActivityEntry(D, acks=1, ack_last=5)]  # 5 came round
    assert (mine[D].pending, mine[D].last_ack) == ([], 4)

    # Never beyond what this member has seen published itself.
    mine = {D: PublisherState(3, [], last_pub=2, last_ack=2)}
    check_against_gm_catchup(mine, {D: MemberSnapshot(8, (), 7, 2)}, M, VIEW)
    assert (mine[D].last_pub, mine[D].last_ack) == (2, 2)


def test_an_old_ack_reaching_an_alias_is_old_news() -> None:
    # After a catch-up moved D's last_ack on to 5, the acks it counted can
    # still arrive: gm.erl asserts they are newer; we keep the larger value.
    members = {D: PublisherState(6, [], last_pub=5, last_ack=5)}
    entry = ActivityEntry(D, acks=2, ack_last=4)
    with pytest.raises(GmCrash):
        gm_calculate_activity(
            as_gm_state(members), [as_gm_entry(entry)], M, VIEW[M].aliases, known=None, literal=True
        )
    gm_after, gm_out, _ = gm_calculate_activity(
        as_gm_state(members), [as_gm_entry(entry)], M, VIEW[M].aliases, known=VIEW.known
    )
    out, own_acked = calculate_activity(members, [entry], M, VIEW)
    assert out == gm_out == []
    assert own_acked == -1
    assert as_gm_state(members) == gm_after
    assert members[D].last_ack == 5


def test_an_entry_for_a_publisher_not_in_the_view_is_dropped() -> None:
    # D has been erased from this view (its heir saw everything of it
    # acknowledged); X was never in it. A stale ack for D still on its way,
    # or anything about X, is dropped and not passed on. gm.erl recreates
    # the publisher blank and sends the entry on (round for ever), or, for
    # acks, fails to apply them to the blank entry.
    view = group_to_view(
        Group("g", 4, (GroupMember(L), GroupMember(M), GroupMember(P), GroupMember(Q)))
    )
    x = mid(9)
    assert D not in view.known
    assert x not in view.known
    members: MembersState = {P: pstate(P, 0, 1, last_pub=1, last_ack=-1)}
    entries = [
        ActivityEntry(D, acks=2, ack_last=5),
        ActivityEntry(x, first=0, pubs=(msg(x, 0),)),
        ActivityEntry(P, first=2, pubs=(msg(P, 2),), acks=1, ack_last=0),
    ]
    gm_entries = as_gm_activity(entries)
    literal, literal_out, _ = gm_calculate_activity(
        as_gm_state(members), gm_entries[1:], M, view[M].aliases, known=None
    )
    assert [publisher for publisher, _, _ in literal_out] == [x, P]
    assert x in literal
    with pytest.raises(GmCrash):
        gm_calculate_activity(as_gm_state(members), gm_entries, M, view[M].aliases, known=None)
    gm_after, gm_out, _ = gm_calculate_activity(
        as_gm_state(members), gm_entries, M, view[M].aliases, known=view.known
    )
    out, own_acked = calculate_activity(members, entries, M, view)
    assert out == [entries[2]]
    assert as_gm_activity(out) == gm_out
    assert own_acked == -1
    assert set(members) == {P}
    assert as_gm_state(members) == gm_after
    assert pending_of(members[P]) == [(1, msg(P, 1)), (2, msg(P, 2))]


# =============================================================================
# Properties on directly generated reachable states
# =============================================================================


@st.composite
def sorted_ints(draw: st.DrawFn, count: int) -> list[int]:
    base = draw(st.integers(0, 4))
    steps = draw(st.lists(st.integers(0, 3), min_size=count - 1, max_size=count - 1))
    out = [base]
    for step in steps:
        out.append(out[-1] + step)
    return out


# Publishers of the example ring: M itself and D (aliases), L, P, Q (not).
ROLES = {M: True, D: True, L: False, P: False, Q: False}


@st.composite
def catchup_pairs(draw: st.DrawFn) -> tuple[GmState, GmState]:
    """M's state and its left L's, as they can be after D, between them, died.

    Not an alias of M: L is upstream, so it has acked at least what M acked
    and seen at least what M saw; and whatever L acked went through M, so M
    saw it: ``a_M <= a_L <= p_M + 1 <= p_L + 1``.

    An alias (M itself, or D): M is the first to see the publications and to
    issue the acknowledgements, and an acknowledgement is issued only after
    the publication went through L: ``a_L <= a_M <= p_L + 1 <= p_M + 1``.
    """
    mine: GmState = {}
    left: GmState = {}
    for publisher in draw(st.lists(st.sampled_from(list(ROLES)), unique=True, max_size=5)):
        x1, x2, x3, x4 = draw(sorted_ints(4))
        if ROLES[publisher]:
            left_state = window(publisher, x1, x3, x1 - 1)
            mine_state = window(publisher, x2, x4, draw(st.integers(-1, x2 - 1)))
        else:
            mine_state = window(publisher, x1, x3, x1 - 1)
            left_state = window(publisher, x2, x4, draw(st.integers(-1, x2 - 1)))
        if mine_state.last_pub >= 0 or draw(st.booleans()):
            mine[publisher] = mine_state
        if left_state.last_pub >= 0 or draw(st.booleans()):
            left[publisher] = left_state
    return mine, left


@DETERMINISTIC
@given(catchup_pairs())
def test_catchup_matches_gm_on_reachable_states(pair: tuple[GmState, GmState]) -> None:
    gm_mine, gm_left = pair
    mine = ours_from_gm(gm_mine)
    left = {member: snapshot_of(state) for member, state in gm_left.items()}
    Drops.count = 0
    check_against_gm_catchup(mine, left, M, VIEW)
    assert Drops.count == 0
    # Against gm.erl literally: the same activity, the same state but for an
    # alias's last_ack, which is never behind gm's nor behind its own before.
    aliases = VIEW[M].aliases
    after, entries = gm_catchup(gm_mine, gm_left, M, aliases)
    literal, literal_entries = gm_catchup(
        gm_mine, gm_left, M, aliases, alias_last_ack=gm_literal_alias_last_ack
    )
    assert entries == literal_entries
    assert set(after) == set(literal)
    for publisher, state in after.items():
        if ROLES[publisher]:
            before = gm_mine.get(publisher, BLANK).last_ack
            assert state.last_ack >= max(literal[publisher].last_ack, before)
            assert state.last_ack <= max(state.last_pub, before)
            assert replace(state, last_ack=literal[publisher].last_ack) == literal[publisher]
        else:
            assert state == literal[publisher]


@st.composite
def activities(draw: st.DrawFn) -> tuple[GmState, list[GmEntry]]:
    """M's state and an activity from its left that can follow it.

    Not an alias: pending ``a..p``; the entry brings the next publications
    ``p+1..q`` and acknowledgements from the front, ``a..b`` with ``b <= q``.

    An alias: pending ``a..p`` with ``last_ack = l < a``; publications come
    back in order from the front, ``a..c`` with ``c <= p``, and only
    acknowledgements already issued come back, ``l+1..y`` with ``y < a``.
    """
    state: GmState = {}
    activity: list[GmEntry] = []
    for publisher in draw(st.lists(st.sampled_from(list(ROLES)), unique=True, max_size=5)):
        if ROLES[publisher]:
            x0, x1, x2, x3, x4 = draw(sorted_ints(5))
            last_ack, a, p = x0 - 1, x2, x4 - 1
            state[publisher] = window(publisher, a, p + 1, last_ack)
            pubs = tuple((n, msg(publisher, n)) for n in range(a, x3))
            acks = tuple(range(x0, x1))
        else:
            x1, x2, x3 = draw(sorted_ints(3))
            a, p, q = x1, x2 - 1, x3 - 1
            state[publisher] = window(publisher, a, p + 1, a - 1)
            b = draw(st.integers(a - 1, q))
            pubs = tuple((n, msg(publisher, n)) for n in range(p + 1, q + 1))
            acks = tuple(range(a, b + 1))
        activity = activity_cons(publisher, pubs, acks, activity)
    return state, activity


@DETERMINISTIC
@given(activities())
def test_calculate_activity_matches_gm_on_reachable_states(
    case: tuple[GmState, list[GmEntry]],
) -> None:
    gm_state, activity = case
    mine = ours_from_gm(gm_state)
    aliases = VIEW[M].aliases
    Drops.count = 0
    gm_after, gm_out, gm_confirmed = gm_calculate_activity(
        gm_state, activity, M, aliases, known=VIEW.known
    )
    assert Drops.count == 0
    out, own_acked = calculate_activity(mine, [as_entry(e) for e in activity], M, VIEW)
    assert as_gm_activity(out) == gm_out
    assert as_gm_state(mine) == gm_after
    assert own_acked == (gm_confirmed[-1] if gm_confirmed else -1)


@st.composite
def arbitrary_alias_inputs(draw: st.DrawFn) -> tuple[int, int, int, list[tuple[int, int, int]]]:
    first = draw(st.integers(0, 10))
    count = draw(st.integers(0, 5))
    last_ack = draw(st.integers(-1, first - 1))
    entries = draw(
        st.lists(st.tuples(st.integers(0, 20), st.integers(0, 5), st.integers(-1, 20)), max_size=4)
    )
    return first, count, last_ack, entries


@DETERMINISTIC
@given(arbitrary_alias_inputs())
def test_alias_drops_whatever_is_not_pending(
    case: tuple[int, int, int, list[tuple[int, int, int]]],
) -> None:
    """Any pubs and acks at an alias, reachable or not: no crash, no loop, only real acks."""
    first, count, last_ack, raw = case
    members: MembersState = {D: pstate(D, first, first + count - 1, first + count - 1, last_ack)}
    pending = set(range(first, first + count))
    entries = [
        ActivityEntry(
            D, first=f, pubs=tuple(msgs(D, f, f + n - 1)), acks=1 if al >= 0 else 0, ack_last=al
        )
        for f, n, al in raw
    ]
    out, own_acked = calculate_activity(members, entries, M, VIEW)
    assert own_acked == -1
    acked: list[int] = []
    for entry in out:
        assert entry.pubs == ()
        acked.extend(range(entry.ack_last - entry.acks + 1, entry.ack_last + 1))
    assert set(acked) <= pending
    assert len(acked) == len(set(acked))
    state = members[D]
    assert pending_of(state) == [(n, msg(D, n)) for n in range(state.first, first + count)]
    assert state.last_ack == max([last_ack] + [al for _, _, al in raw])


# =============================================================================
# A whole ring: gm's state and ours side by side through every step
# =============================================================================

MAX_MEMBERS = 7

Message = tuple[str, object, object]  # ("activity" | "catchup", gm payload, our payload)


class Ring:
    """A ring of members, each holding gm's state and ours, over FIFO links.

    Views are refreshed everywhere at once on every change (one of the
    schedules gm allows), a member only takes messages from its left, and a
    member left alone blanks its state (gm's DOWN handling, bug 26119).
    """

    def __init__(self, size: int) -> None:
        self.group = Group("g", 0, tuple(GroupMember(mid(i)) for i in range(size)))
        self.next_serial = size
        self.view = group_to_view(self.group)
        known = self.view.known
        self.gm: dict[MemberId, GmState] = {
            m: gm_remove_erased_members({}, known) for m in self.view.members
        }
        self.ours: dict[MemberId, MembersState] = {
            m: remove_erased_members({}, self.view) for m in self.view.members
        }
        self.pub_count: dict[MemberId, int] = dict.fromkeys(self.view.members, -1)
        self.links: dict[tuple[MemberId, MemberId], deque[Message]] = {}
        self.steps = 0

    @property
    def alive(self) -> list[MemberId]:
        return list(self.group.alive)

    def check(self, member: MemberId) -> None:
        assert as_gm_state(self.ours[member]) == self.gm[member], member

    def send(self, sender: MemberId, message: Message) -> None:
        right = self.view[sender].right
        self.links.setdefault((sender, right), deque()).append(message)

    def publish(self, member: MemberId, count: int) -> None:
        first = self.pub_count[member] + 1
        self.pub_count[member] += count
        pubs = tuple(msgs(member, first, first + count - 1))
        numbered = tuple(zip(range(first, first + count), pubs, strict=True))
        own = self.gm[member].get(member, BLANK)
        self.gm[member][member] = GmMember(
            gm_join_pubs(own.pending_ack, numbered), first + count - 1, own.last_ack
        )
        state_for(self.ours[member], member).join_pubs(first, pubs)
        self.check(member)
        self.send(
            member,
            (
                "activity",
                [(member, numbered, ())],
                (ActivityEntry(member, first=first, pubs=pubs),),
            ),
        )

    def deliver(self, pick: int) -> None:
        busy = sorted(link for link, queue in self.links.items() if queue)
        if not busy:
            return
        self.steps += 1
        sender, member = busy[pick % len(busy)]
        assert self.view[member].left == sender
        kind, gm_payload, our_payload = self.links[sender, member].popleft()
        aliases = self.view[member].aliases
        if kind == "catchup":
            assert isinstance(gm_payload, dict)
            assert isinstance(our_payload, tuple)
            gm_state, gm_in = gm_catchup(self.gm[member], gm_payload, member, aliases)
            our_in = catchup_entries(self.ours[member], dict(our_payload), member, self.view)
            assert as_gm_activity(our_in) == gm_in
            self.gm[member] = gm_state
            self.check(member)
        else:
            assert isinstance(gm_payload, list)
            assert isinstance(our_payload, tuple)
            gm_in, our_in = gm_payload, list(our_payload)
        gm_state, gm_out, gm_confirmed = gm_calculate_activity(
            self.gm[member], gm_in, member, aliases, known=self.view.known
        )
        our_out, own_acked = calculate_activity(self.ours[member], our_in, member, self.view)
        self.gm[member] = gm_state
        self.check(member)
        assert as_gm_activity(our_out) == gm_out
        assert own_acked == (gm_confirmed[-1] if gm_confirmed else -1)
        if gm_out:
            self.send(member, ("activity", gm_out, tuple(our_out)))
        self.maybe_erase_aliases(member)

    def maybe_erase_aliases(self, member: MemberId) -> None:
        aliases = self.view[member].aliases
        erasable = erasable_aliases(self.ours[member], member, self.view)
        assert erasable == gm_erasable(self.gm[member], member, aliases)
        if erasable:
            self.change(
                attrs.evolve(
                    self.group,
                    version=self.group.version + 1,
                    members=tuple(m for m in self.group.members if m.id not in erasable),
                )
            )

    def kill(self, pick: int) -> None:
        alive = self.alive
        if len(alive) < 2:
            return
        dead = alive[pick % len(alive)]
        members = tuple(GroupMember(m.id, m.dead or m.id == dead) for m in self.group.members)
        self.change(attrs.evolve(self.group, version=self.group.version + 1, members=members))
        if len(self.alive) == 1:
            (last,) = self.alive
            self.gm[last], self.ours[last] = {}, {}
            self.maybe_erase_aliases(last)

    def join(self, pick: int) -> None:
        if len(self.group.members) >= MAX_MEMBERS:
            return
        alive = self.alive
        left = alive[pick % len(alive)]
        new = mid(self.next_serial)
        self.next_serial += 1
        members: list[GroupMember] = []
        for m in self.group.members:
            members.append(m)
            if m.id == left:
                members.append(GroupMember(new))
        self.change(
            attrs.evolve(self.group, version=self.group.version + 1, members=tuple(members)),
            joined=(new, left),
        )

    def change(self, group: Group, joined: tuple[MemberId, MemberId] | None = None) -> None:
        old = self.view
        self.group = group
        self.view = view = group_to_view(group)
        known = view.known
        for member in list(self.gm):
            if member not in view.members:
                del self.gm[member], self.ours[member]
                continue
            self.gm[member] = gm_remove_erased_members(self.gm[member], known)
            self.ours[member] = remove_erased_members(self.ours[member], view)
            self.check(member)
        if joined is not None:
            # The joiner starts with exactly its left's state (Lemma 2).
            new, left = joined
            self.gm[new] = dict(self.gm[left])
            self.ours[new] = build_members_state(prepare_snapshot(self.ours[left]))
            self.pub_count[new] = -1
        self.links = {
            (s, r): q for (s, r), q in self.links.items() if r in view.members and view[r].left == s
        }
        for member in sorted(view.members):
            right = view[member].right
            old_right = old.members[member].right if member in old.members else None
            if right != old_right and right != member:
                self.send(
                    member,
                    ("catchup", dict(self.gm[member]), prepare_snapshot(self.ours[member])),
                )

    def drain(self) -> None:
        for _ in range(10_000):
            if not any(self.links.values()):
                return
            self.deliver(0)
        raise AssertionError("the ring did not quiesce")


Action = tuple[str, int, int]

actions = st.lists(
    st.tuples(
        st.sampled_from(
            ["publish", "publish", "deliver", "deliver", "deliver", "deliver", "kill", "join"]
        ),
        st.integers(0, 30),
        st.integers(1, 3),
    ),
    min_size=10,
    max_size=100,
)


def run_ring(size: int, steps: list[Action]) -> Ring:
    ring = Ring(size)
    Drops.count = 0
    for action, pick, count in steps:
        if action == "publish":
            alive = ring.alive
            ring.publish(alive[pick % len(alive)], count)
        elif action == "deliver":
            ring.deliver(pick)
        elif action == "kill":
            ring.kill(pick)
        else:
            ring.join(pick)
    ring.drain()
    assert Drops.count == 0  # never left the reachable states
    return ring


@settings(DETERMINISTIC, max_examples=400)
@given(st.integers(1, 5), actions)
def test_ring_runs_match_gm_step_by_step(size: int, steps: list[Action]) -> None:
    ring = run_ring(size, steps)
    # Quiet again: every publication that survived is acknowledged everywhere,
    # and every dead member was erased (with gm's alias last_ack, a catch-up
    # from a stale copy could keep one for ever: alias-ack-lost).
    assert not ring.group.dead
    for member in ring.alive:
        for state in ring.ours[member].values():
            assert state.pending == []
            assert state.last_ack <= state.last_pub
    # Not has_pending() yet: as in gm, a joiner that copied a publisher's
    # state after the publisher retired a pub but before its ack came round
    # keeps last_ack < last_pub until that publisher publishes again. So
    # every member publishes once more; then nothing at all is pending.
    for member in ring.alive:
        ring.publish(member, 1)
    ring.drain()
    assert not ring.group.dead
    for member in ring.alive:
        assert not has_pending(ring.ours[member]), member
        assert ring.gm[member] == as_gm_state(ring.ours[member])


def test_ring_run_with_a_death_and_a_join_exercises_catchups() -> None:
    # Members 0, 1, 2: 0 publishes, 1 forwards to 2; 1 dies before 2 hears
    # the rest. 0 catches 2 up; a joiner after 2 starts from 2's state.
    ring = Ring(3)
    n0, n1, n2 = mid(0), mid(1), mid(2)
    ring.publish(n0, 2)
    ring.deliver(0)  # 0 -> 1
    ring.publish(n0, 1)
    ring.kill(1)  # 1 dies holding pub 2; 2 never saw any
    assert ring.view[n2].aliases == frozenset({n1})
    assert ring.links[n0, n2][0][0] == "catchup"
    ring.deliver(0)  # the catch-up: 2 gets pubs 0..2 from 0's pending
    assert pending_of(ring.ours[n2][n0]) == [(0, msg(n0, 0)), (1, msg(n0, 1)), (2, msg(n0, 2))]
    ring.join(1)  # a new member, 3, joins after 2 (alive are 0 and 2)
    new = mid(3)
    assert as_gm_state(ring.ours[new]) == as_gm_state(ring.ours[n2])
    ring.drain()
    for member in ring.alive:
        assert not has_pending(ring.ours[member])
    assert ring.ours[n0][n0].last_ack == 2
    assert ring.steps > 3
