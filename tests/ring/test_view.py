"""Views built from the stored ring: aliases, links, and gm's ``group_to_view``.

The reference at the bottom is a literal port of gm.erl's ``group_to_view``
(``link_view`` over ``Alive ++ Alive ++ Alive``, ``ensure_alive_suffix`` and
``add_aliases``); the property tests check ours against it on arbitrary rings.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_gm._ids import MemberId
from trio_gm.ring.view import View, ViewMember, births_and_deaths, group_to_view
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


def ring(*spec: tuple[int, bool], version: int = 7) -> Group:
    """A group from ``(serial, dead)`` pairs, in ring order."""
    return Group("g", version, tuple(GroupMember(mid(s), dead) for s, dead in spec))


A, B, C, D, E = (mid(i) for i in range(1, 6))
ALIVE, DEAD = False, True


# -- examples -----------------------------------------------------------------


def test_dead_member_is_inherited_by_the_next_alive_member_downstream() -> None:
    # A, B(dead), C, D(dead): B goes right to C; D wraps round to A.
    view = group_to_view(ring((1, ALIVE), (2, DEAD), (3, ALIVE), (4, DEAD)))
    assert view[C].aliases == frozenset({B})
    assert view[A].aliases == frozenset({D})


def test_run_of_dead_members_goes_to_one_heir_not_to_the_upstream_member() -> None:
    # A, B(dead), C(dead), D: both dead go downstream to D, none to A upstream.
    view = group_to_view(ring((1, ALIVE), (2, DEAD), (3, DEAD), (4, ALIVE)))
    assert view[D].aliases == frozenset({B, C})
    assert view[A].aliases == frozenset()


def test_dead_members_at_both_ends_wrap_to_the_first_alive_member() -> None:
    # B(dead), A, C(dead), D(dead): C and D wrap round past the end; B is before A.
    view = group_to_view(ring((2, DEAD), (1, ALIVE), (3, DEAD), (4, DEAD)))
    assert set(view.members) == {A}
    assert view[A].aliases == frozenset({B, C, D})


def test_links_follow_stored_ring_order_not_id_order() -> None:
    # Stored order C, A, E(dead), B: the ring of alive members is C -> A -> B -> C.
    view = group_to_view(ring((3, ALIVE), (1, ALIVE), (5, DEAD), (2, ALIVE)))
    assert view[C] == ViewMember(id=C, left=B, right=A, aliases=frozenset())
    assert view[A] == ViewMember(id=A, left=C, right=B, aliases=frozenset())
    assert view[B] == ViewMember(id=B, left=A, right=C, aliases=frozenset({E}))


def test_two_alive_members_are_each_others_left_and_right() -> None:
    view = group_to_view(ring((1, ALIVE), (2, ALIVE)))
    assert (view[A].left, view[A].right) == (B, B)
    assert (view[B].left, view[B].right) == (A, A)


def test_single_alive_member_is_its_own_left_and_right() -> None:
    view = group_to_view(ring((2, DEAD), (1, ALIVE), (3, DEAD)))
    assert view[A] == ViewMember(id=A, left=A, right=A, aliases=frozenset({B, C}))
    assert view.alive == [A]


def test_single_member_alone() -> None:
    view = group_to_view(ring((1, ALIVE)))
    assert view[A] == ViewMember(id=A, left=A, right=A, aliases=frozenset())


@pytest.mark.parametrize(
    "group",
    [ring((1, DEAD), (2, DEAD)), ring((1, DEAD)), ring()],
    ids=["two-dead", "one-dead", "empty"],
)
def test_group_without_alive_member_has_no_view(group: Group) -> None:
    with pytest.raises(ValueError, match="no alive member"):
        group_to_view(group)


def test_view_carries_group_version_and_only_alive_members() -> None:
    view = group_to_view(ring((1, ALIVE), (2, DEAD), (3, ALIVE), version=42))
    assert view.version == 42
    assert set(view.members) == {A, C}
    assert view.alive == [A, C]


def test_known_is_alive_plus_dead_aliases() -> None:
    view = group_to_view(ring((1, ALIVE), (2, DEAD), (3, ALIVE), (4, DEAD), (5, DEAD)))
    assert view.known == frozenset({A, B, C, D, E})
    only_alive = group_to_view(ring((1, ALIVE), (3, ALIVE)))
    assert only_alive.known == frozenset({A, C})


def test_is_alias() -> None:
    view = group_to_view(ring((1, ALIVE), (2, DEAD), (3, ALIVE)))
    assert view.is_alias(A, of=A)
    assert view.is_alias(B, of=C)
    assert not view.is_alias(B, of=A)
    assert not view.is_alias(A, of=C)


def test_births_and_deaths() -> None:
    births, deaths = births_and_deaths([C, A, B], [D, B, A, E])
    assert births == [D, E]
    assert deaths == [C]
    assert births_and_deaths([A], [A]) == ([], [])


# -- reference: gm.erl's group_to_view, literally ---------------------------


def gm_group_to_view(
    group: Group,
) -> dict[MemberId, tuple[MemberId, MemberId, frozenset[MemberId]]]:
    """gm's view: id -> (left, right, aliases)."""
    members = [(m.id, m.dead) for m in group.members]
    alive = [mid_ for mid_, dead in members if not dead]
    assert alive  # [_|_] = Alive
    view = gm_link_view(alive + alive + alive, {})
    return gm_add_aliases(view, members)


def gm_link_view(
    ids: list[MemberId], view: dict[MemberId, tuple[MemberId, MemberId, frozenset[MemberId]]]
) -> dict[MemberId, tuple[MemberId, MemberId, frozenset[MemberId]]]:
    if len(ids) >= 3:
        left, middle, right = ids[0], ids[1], ids[2]
        if middle not in view:
            return gm_link_view(ids[1:], {**view, middle: (left, right, frozenset())})
        return view
    return view


def gm_ensure_alive_suffix(members: list[tuple[MemberId, bool]]) -> list[tuple[MemberId, bool]]:
    last = members[-1]
    if not last[1]:
        return members
    return gm_ensure_alive_suffix([last, *members[:-1]])


def gm_add_aliases(
    view: dict[MemberId, tuple[MemberId, MemberId, frozenset[MemberId]]],
    members: list[tuple[MemberId, bool]],
) -> dict[MemberId, tuple[MemberId, MemberId, frozenset[MemberId]]]:
    dead_acc: frozenset[MemberId] = frozenset()
    for member, dead in gm_ensure_alive_suffix(members):
        if not dead:
            left, right, aliases = view[member]
            view = {**view, member: (left, right, aliases | dead_acc)}
            dead_acc = frozenset()
        else:
            dead_acc = dead_acc | {member}
    assert not dead_acc
    return view


def as_tuples(view: View) -> dict[MemberId, tuple[MemberId, MemberId, frozenset[MemberId]]]:
    return {m: (vm.left, vm.right, vm.aliases) for m, vm in view.members.items()}


def test_reference_port_agrees_with_an_example() -> None:
    # Guard against a reference that agrees with anything.
    group = ring((3, ALIVE), (2, DEAD), (1, ALIVE), (4, DEAD))
    assert gm_group_to_view(group) == {
        C: (A, A, frozenset({D})),
        A: (C, C, frozenset({B})),
    }


# -- properties ----------------------------------------------------------------


@st.composite
def groups(draw: st.DrawFn) -> Group:
    serials = draw(st.lists(st.integers(0, 50), min_size=1, max_size=9, unique=True))
    dead = draw(st.lists(st.booleans(), min_size=len(serials), max_size=len(serials)))
    keep_alive = draw(st.integers(0, len(serials) - 1))
    dead[keep_alive] = False
    return Group(
        "g",
        draw(st.integers(0, 1000)),
        tuple(GroupMember(mid(s), d) for s, d in zip(serials, dead, strict=True)),
    )


@DETERMINISTIC
@given(groups())
def test_view_matches_gm_group_to_view(group: Group) -> None:
    view = group_to_view(group)
    assert view.version == group.version
    assert as_tuples(view) == gm_group_to_view(group)


@DETERMINISTIC
@given(groups())
def test_every_dead_member_has_exactly_one_heir_downstream(group: Group) -> None:
    view = group_to_view(group)
    for dead in group.dead:
        heirs = [m for m, vm in view.members.items() if dead in vm.aliases]
        assert len(heirs) == 1
        # The heir is the first alive member after the dead one, wrapping round.
        ids = list(group.ids)
        i = ids.index(dead)
        after = ids[i + 1 :] + ids[: i + 1]
        assert heirs[0] == next(m for m in after if group.is_alive(m))
    assert view.known == frozenset(group.ids)
    inherited = [a for vm in view.members.values() for a in vm.aliases]
    assert sorted(inherited) == sorted(group.dead)


@DETERMINISTIC
@given(groups())
def test_right_links_visit_every_alive_member_once_in_stored_order(group: Group) -> None:
    view = group_to_view(group)
    alive = list(group.alive)
    for start in alive:
        visited = [start]
        current = view[start].right
        while current != start:
            visited.append(current)
            assert len(visited) <= len(alive)
            current = view[current].right
        i = alive.index(start)
        assert visited == alive[i:] + alive[:i]
    for member in alive:
        assert view[view[member].right].left == member
        assert view[view[member].left].right == member
