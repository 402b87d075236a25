"""The membership changes (each op's ``apply``): every rule, without a database."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_gm import MemberId
from trio_gm.store import Group, GroupMember, LostMembership
from trio_gm.store.ops import (
    VERSION_START,
    EraseMembers,
    PruneOrCreate,
    RecordDead,
    RecordNewMember,
    StoreOp,
)

A, B, C, D, N = (MemberId("n", i) for i in range(1, 6))


def ring(*members: MemberId | tuple[MemberId, str], version: int = 3) -> Group:
    """A group "g"; a member written ``(id, "dead")`` is marked dead."""
    return Group(
        "g",
        version,
        tuple(
            GroupMember(m[0], dead=True) if isinstance(m, tuple) else GroupMember(m)
            for m in members
        ),
    )


def dead(member: MemberId) -> tuple[MemberId, str]:
    return (member, "dead")


# --------------------------------------------------------------- PruneOrCreate


def test_prune_or_create_creates_a_missing_group_with_only_self() -> None:
    assert PruneOrCreate(A).apply(None, "g") == Group("g", VERSION_START, (GroupMember(A),))


def test_prune_or_create_starts_a_missing_group_at_the_members_version_bug_25670() -> None:
    assert PruneOrCreate(A, 17).apply(None, "g") == Group("g", 17, (GroupMember(A),))


def test_prune_or_create_keeps_a_group_with_an_alive_member() -> None:
    group = ring(dead(B), C)
    assert PruneOrCreate(A, 99).apply(group, "g") is group


def test_prune_or_create_replaces_an_all_dead_group_above_its_version() -> None:
    group = ring(dead(B), dead(C), version=7)
    assert PruneOrCreate(A).apply(group, "g") == Group("g", 8, (GroupMember(A),))


def test_prune_or_create_replacement_never_below_the_members_version_bug_25670() -> None:
    group = ring(dead(B), version=7)
    assert PruneOrCreate(A, 20).apply(group, "g") == Group("g", 20, (GroupMember(A),))
    # ... nor below the row's version + 1 when the member knows less.
    assert PruneOrCreate(A, 3).apply(group, "g").version == 8


def test_prune_or_create_replaces_an_empty_ring() -> None:
    assert PruneOrCreate(A).apply(ring(version=4), "g") == Group("g", 5, (GroupMember(A),))


def test_prune_or_create_refuses_a_group_of_another_name() -> None:
    with pytest.raises(ValueError, match="asked for group 'h' but was given group 'g'"):
        PruneOrCreate(A).apply(ring(A), "h")


# ------------------------------------------------------------- RecordNewMember


def test_add_inserts_the_new_member_right_of_left() -> None:
    assert RecordNewMember(B, N).apply(ring(A, B, C), "g") == ring(A, B, N, C, version=4)
    assert RecordNewMember(C, N).apply(ring(A, B, C), "g") == ring(A, B, C, N, version=4)


def test_add_goes_right_of_left_even_before_dead_members() -> None:
    assert RecordNewMember(A, N).apply(ring(A, dead(B), C), "g") == ring(
        A, N, dead(B), C, version=4
    )


def test_add_of_a_member_already_in_the_ring_is_a_no_op_issue_972() -> None:
    group = ring(A, B, C)
    assert RecordNewMember(A, C).apply(group, "g") is group
    assert RecordNewMember(C, B).apply(group, "g") is group
    with_dead = ring(A, dead(B))
    assert RecordNewMember(A, B).apply(with_dead, "g") is with_dead


def test_add_when_left_is_dead_or_absent_is_lost_membership() -> None:
    lost = RecordNewMember(B, N).apply(ring(A, dead(B)), "g")
    assert isinstance(lost, LostMembership)
    assert lost.group == "g"
    assert "marked dead" in lost.reason
    assert str(B) in lost.reason
    lost = RecordNewMember(D, N).apply(ring(A), "g")
    assert isinstance(lost, LostMembership)
    assert "not in the ring" in lost.reason


def test_add_to_a_missing_group_is_lost_membership() -> None:
    assert RecordNewMember(A, N).apply(None, "g") == LostMembership("g", "group 'g' does not exist")


# ------------------------------------------------------------------ RecordDead


def test_record_dead_marks_the_member_dead_in_place() -> None:
    assert RecordDead(A, B).apply(ring(A, B, C), "g") == ring(A, dead(B), C, version=4)


def test_record_dead_of_an_already_dead_or_absent_member_is_a_no_op() -> None:
    group = ring(A, dead(B), C)
    assert RecordDead(A, B).apply(group, "g") is group
    assert RecordDead(A, D).apply(group, "g") is group


def test_record_dead_with_verify_needs_self_alive() -> None:
    lost = RecordDead(A, B).apply(ring(dead(A), B, C), "g")
    assert isinstance(lost, LostMembership)
    assert "member" in lost.reason
    assert str(A) in lost.reason
    assert isinstance(RecordDead(A, B, True).apply(ring(B, C), "g"), LostMembership)


def test_record_dead_without_verify_needs_only_the_group() -> None:
    # A joiner (not yet in the ring) found its chosen left dead.
    assert RecordDead(N, B, False).apply(ring(B, C), "g") == ring(dead(B), C, version=4)
    assert RecordDead(N, B, verify=False).apply(ring(B, C), "g") == ring(dead(B), C, version=4)
    assert isinstance(RecordDead(N, B, False).apply(None, "g"), LostMembership)


def test_record_dead_in_a_missing_group_is_lost_membership() -> None:
    assert RecordDead(A, B).apply(None, "g") == LostMembership("g", "group 'g' does not exist")


def test_a_member_may_record_itself_dead_only_once() -> None:
    once = RecordDead(A, A).apply(ring(A, B), "g")
    assert once == ring(dead(A), B, version=4)
    assert isinstance(once, Group)
    assert isinstance(RecordDead(A, A).apply(once, "g"), LostMembership)


# ---------------------------------------------------------------- EraseMembers


def test_erase_removes_only_dead_markers_of_the_given_ids() -> None:
    group = ring(A, dead(B), C, dead(D))
    assert EraseMembers(A, (B,)).apply(group, "g") == ring(A, C, dead(D), version=4)
    assert EraseMembers(A, (B, D, C)).apply(group, "g") == ring(A, C, version=4)


def test_erase_of_alive_or_absent_members_is_a_no_op() -> None:
    group = ring(A, dead(B), C)
    assert EraseMembers(A, (C, N)).apply(group, "g") is group
    assert EraseMembers(A, ()).apply(group, "g") is group


def test_erase_needs_self_alive() -> None:
    assert isinstance(EraseMembers(A, (B,)).apply(ring(dead(A), dead(B), C), "g"), LostMembership)
    assert isinstance(EraseMembers(A, (C,)).apply(ring(B, dead(C)), "g"), LostMembership)
    assert isinstance(EraseMembers(A, (B,)).apply(None, "g"), LostMembership)


# ------------------------------------------------------------------ the ops


def test_each_op_is_a_frozen_value_named_as_the_store_names_it() -> None:
    ops: list[StoreOp] = [
        PruneOrCreate(A),
        RecordNewMember(A, B),
        RecordDead(A, B),
        EraseMembers(A, (B,)),
    ]
    assert [op.operation for op in ops] == [
        "prune_or_create_group",
        "record_new_member",
        "record_dead_member",
        "erase_members",
    ]
    assert RecordDead(A, B) == RecordDead(A, B, verify=True)
    assert PruneOrCreate(A) == PruneOrCreate(A, VERSION_START)
    assert len({*ops, *ops}) == len(ops)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        RecordDead(A, B).verify = False  # type: ignore[misc]


# ------------------------------------------------------------------ properties

ids = st.builds(MemberId, st.sampled_from(["n1", "n2", "n3"]), st.integers(0, 6))


@st.composite
def groups(draw: st.DrawFn) -> Group:
    members = draw(st.lists(ids, unique=True, max_size=8))
    flags = draw(st.lists(st.booleans(), min_size=len(members), max_size=len(members)))
    version = draw(st.integers(0, 1000))
    return Group(
        "g", version, tuple(GroupMember(m, d) for m, d in zip(members, flags, strict=True))
    )


def check_change(before: Group, after: Group | LostMembership) -> None:
    """What every operation promises: no change means the same object."""
    if isinstance(after, LostMembership):
        assert after.group == "g"
        return
    assert after.name == before.name
    if after is before:
        return
    assert after.version == before.version + 1
    assert after != before


def survivors_keep_their_order(before: Group, after: Group) -> None:
    kept = [m for m in after.ids if m in before]
    assert kept == [m for m in before.ids if m in set(kept)]


@given(groups(), ids, ids)
def test_add_properties(group: Group, left: MemberId, new: MemberId) -> None:
    after = RecordNewMember(left, new).apply(group, "g")
    check_change(group, after)
    if not group.is_alive(left):
        assert isinstance(after, LostMembership)
    elif new in group:
        assert after is group
    else:
        assert isinstance(after, Group)
        assert after.ids.index(new) == after.ids.index(left) + 1
        assert after.is_alive(new)
        assert [m for m in after.members if m.id != new] == list(group.members)


@given(groups(), ids, ids, st.booleans())
def test_record_dead_properties(
    group: Group, self_id: MemberId, member: MemberId, verify: bool
) -> None:
    after = RecordDead(self_id, member, verify).apply(group, "g")
    check_change(group, after)
    if verify and not group.is_alive(self_id):
        assert isinstance(after, LostMembership)
        return
    assert isinstance(after, Group)
    assert after.ids == group.ids
    assert not after.is_alive(member)
    assert (after is group) == (not group.is_alive(member))
    assert set(group.alive) - set(after.alive) <= {member}


@given(groups(), ids, st.lists(ids))
def test_erase_properties(group: Group, self_id: MemberId, erase: list[MemberId]) -> None:
    after = EraseMembers(self_id, tuple(erase)).apply(group, "g")
    check_change(group, after)
    if not group.is_alive(self_id):
        assert isinstance(after, LostMembership)
        return
    assert isinstance(after, Group)
    assert after.alive == group.alive
    assert set(after.dead) == set(group.dead) - set(erase)
    survivors_keep_their_order(group, after)


@given(st.one_of(st.none(), groups()), ids, st.integers(0, 2000))
def test_prune_or_create_properties(group: Group | None, self_id: MemberId, known: int) -> None:
    after = PruneOrCreate(self_id, known).apply(group, "g")
    if group is not None and group.alive:
        assert after is group
        return
    assert after.members == (GroupMember(self_id),)
    assert after.version >= known
    if group is not None:
        assert after.version > group.version


@given(groups(), st.lists(st.tuples(st.integers(0, 2), ids, ids), max_size=30))
def test_any_sequence_of_changes_keeps_ids_unique_and_versions_counting(
    group: Group, steps: list[tuple[int, MemberId, MemberId]]
) -> None:
    current = group
    changes = 0
    for kind, x, y in steps:
        if kind == 0:
            after = RecordNewMember(x, y).apply(current, "g")
        elif kind == 1:
            after = RecordDead(x, y, False).apply(current, "g")
        else:
            after = EraseMembers(x, (y,)).apply(current, "g")
        if isinstance(after, Group):
            changes += after is not current
            current = after
    # The Group validator already rejects duplicate ids; versions count changes.
    assert current.version == group.version + changes
