"""The membership changes as pure functions: every rule, without a database."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_gm import MemberId
from trio_gm.store import Group, GroupMember, LostMembership
from trio_gm.store.ops import (
    VERSION_START,
    add_member_right_of,
    erase_members,
    prune_or_create,
    record_dead,
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


# ------------------------------------------------------------- prune_or_create


def test_prune_or_create_creates_a_missing_group_with_only_self() -> None:
    assert prune_or_create(None, "g", A) == Group("g", VERSION_START, (GroupMember(A),))


def test_prune_or_create_starts_a_missing_group_at_the_members_version_bug_25670() -> None:
    assert prune_or_create(None, "g", A, 17) == Group("g", 17, (GroupMember(A),))


def test_prune_or_create_keeps_a_group_with_an_alive_member() -> None:
    group = ring(dead(B), C)
    assert prune_or_create(group, "g", A, 99) is group


def test_prune_or_create_replaces_an_all_dead_group_above_its_version() -> None:
    group = ring(dead(B), dead(C), version=7)
    assert prune_or_create(group, "g", A) == Group("g", 8, (GroupMember(A),))


def test_prune_or_create_replacement_never_below_the_members_version_bug_25670() -> None:
    group = ring(dead(B), version=7)
    assert prune_or_create(group, "g", A, 20) == Group("g", 20, (GroupMember(A),))
    # ... nor below the row's version + 1 when the member knows less.
    assert prune_or_create(group, "g", A, 3).version == 8


def test_prune_or_create_replaces_an_empty_ring() -> None:
    assert prune_or_create(ring(version=4), "g", A) == Group("g", 5, (GroupMember(A),))


# --------------------------------------------------------- add_member_right_of


def test_add_inserts_the_new_member_right_of_left() -> None:
    assert add_member_right_of(ring(A, B, C), B, N) == ring(A, B, N, C, version=4)
    assert add_member_right_of(ring(A, B, C), C, N) == ring(A, B, C, N, version=4)


def test_add_goes_right_of_left_even_before_dead_members() -> None:
    assert add_member_right_of(ring(A, dead(B), C), A, N) == ring(A, N, dead(B), C, version=4)


def test_add_of_a_member_already_in_the_ring_is_a_no_op_issue_972() -> None:
    group = ring(A, B, C)
    assert add_member_right_of(group, A, C) is group
    assert add_member_right_of(group, C, B) is group
    with_dead = ring(A, dead(B))
    assert add_member_right_of(with_dead, A, B) is with_dead


def test_add_when_left_is_dead_or_absent_is_lost_membership() -> None:
    lost = add_member_right_of(ring(A, dead(B)), B, N)
    assert isinstance(lost, LostMembership)
    assert lost.group == "g"
    assert "marked dead" in lost.reason
    assert str(B) in lost.reason
    lost = add_member_right_of(ring(A), D, N)
    assert isinstance(lost, LostMembership)
    assert "not in the ring" in lost.reason


def test_add_to_a_missing_group_is_lost_membership() -> None:
    assert add_member_right_of(None, A, N, name="g") == LostMembership(
        "g", "group 'g' does not exist"
    )
    assert isinstance(add_member_right_of(None, A, N), LostMembership)


# ------------------------------------------------------------------ record_dead


def test_record_dead_marks_the_member_dead_in_place() -> None:
    assert record_dead(ring(A, B, C), A, B) == ring(A, dead(B), C, version=4)


def test_record_dead_of_an_already_dead_or_absent_member_is_a_no_op() -> None:
    group = ring(A, dead(B), C)
    assert record_dead(group, A, B) is group
    assert record_dead(group, A, D) is group


def test_record_dead_with_verify_needs_self_alive() -> None:
    lost = record_dead(ring(dead(A), B, C), A, B)
    assert isinstance(lost, LostMembership)
    assert "member" in lost.reason
    assert str(A) in lost.reason
    assert isinstance(record_dead(ring(B, C), A, B, True), LostMembership)


def test_record_dead_without_verify_needs_only_the_group() -> None:
    # A joiner (not yet in the ring) found its chosen left dead.
    assert record_dead(ring(B, C), N, B, False) == ring(dead(B), C, version=4)
    assert record_dead(ring(B, C), N, B, verify=False) == ring(dead(B), C, version=4)
    assert isinstance(record_dead(None, N, B, False, name="g"), LostMembership)


def test_record_dead_in_a_missing_group_is_lost_membership() -> None:
    assert record_dead(None, A, B, name="g") == LostMembership("g", "group 'g' does not exist")


def test_a_member_may_record_itself_dead_only_once() -> None:
    once = record_dead(ring(A, B), A, A)
    assert once == ring(dead(A), B, version=4)
    assert isinstance(once, Group)
    assert isinstance(record_dead(once, A, A), LostMembership)


# ---------------------------------------------------------------- erase_members


def test_erase_removes_only_dead_markers_of_the_given_ids() -> None:
    group = ring(A, dead(B), C, dead(D))
    assert erase_members(group, A, [B]) == ring(A, C, dead(D), version=4)
    assert erase_members(group, A, [B, D, C]) == ring(A, C, version=4)


def test_erase_of_alive_or_absent_members_is_a_no_op() -> None:
    group = ring(A, dead(B), C)
    assert erase_members(group, A, [C, N]) is group
    assert erase_members(group, A, []) is group


def test_erase_needs_self_alive() -> None:
    assert isinstance(erase_members(ring(dead(A), dead(B), C), A, [B]), LostMembership)
    assert isinstance(erase_members(ring(B, dead(C)), A, [C]), LostMembership)
    assert isinstance(erase_members(None, A, [B], name="g"), LostMembership)


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
    after = add_member_right_of(group, left, new)
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
    after = record_dead(group, self_id, member, verify)
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
    after = erase_members(group, self_id, erase)
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
    after = prune_or_create(group, "g", self_id, known)
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
            after = add_member_right_of(current, x, y)
        elif kind == 1:
            after = record_dead(current, x, y, False)
        else:
            after = erase_members(current, x, [y])
        if isinstance(after, Group):
            changes += after is not current
            current = after
    # The Group validator already rejects duplicate ids; versions count changes.
    assert current.version == group.version + changes
