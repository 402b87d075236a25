"""The ring's JSON encoding: exact round trips, strict reading."""

from __future__ import annotations

import json

import pytest
from cattrs import BaseValidationError
from hypothesis import given
from hypothesis import strategies as st

from trio_gm import MemberId
from trio_gm.store import Group, GroupMember
from trio_gm.store.codec import members_from_json, members_to_json

# Text a database can hold: no lone surrogates (PostgreSQL's json rejects them).
texts = st.text(st.characters(exclude_categories=["Cs"]))
members = st.lists(
    st.builds(GroupMember, st.builds(MemberId, texts, st.integers()), st.booleans()),
    unique_by=lambda m: m.id,
    max_size=10,
).map(tuple)


@given(members)
def test_members_round_trip_exactly_through_json_text(ring: tuple[GroupMember, ...]) -> None:
    encoded = json.loads(json.dumps(members_to_json(ring)))
    assert members_from_json(encoded) == ring


def test_the_encoding_is_plain_named_json() -> None:
    ring = (GroupMember(MemberId("a", 1)), GroupMember(MemberId("b", 2), dead=True))
    assert members_to_json(ring) == [
        {"id": {"node": "a", "serial": 1}, "dead": False},
        {"id": {"node": "b", "serial": 2}, "dead": True},
    ]


@pytest.mark.parametrize(
    "value",
    [
        {"id": {"node": "a", "serial": 1}, "dead": False},  # not a list
        [{"id": {"node": 1, "serial": 1}, "dead": False}],  # node not a string
        [{"id": {"node": "a", "serial": "1"}, "dead": False}],  # serial not an int
        [{"id": {"node": "a", "serial": True}, "dead": False}],  # a bool is no serial
        [{"id": {"node": "a", "serial": 1}, "dead": 0}],  # dead not a bool
        [{"id": {"node": "a", "serial": 1}, "dead": False, "extra": 1}],  # unknown key
        [{"id": {"node": "a"}, "dead": False}],  # missing key
    ],
)
def test_reading_is_strict(value: object) -> None:
    with pytest.raises((BaseValidationError, TypeError)):
        members_from_json(value)


def test_a_ring_never_holds_an_id_twice() -> None:
    with pytest.raises(ValueError, match="more than once"):
        Group("g", 1, (GroupMember(MemberId("a", 1)), GroupMember(MemberId("a", 1), True)))


def test_group_views() -> None:
    a, b, c = MemberId("a", 1), MemberId("b", 1), MemberId("c", 1)
    group = Group("g", 1, [GroupMember(a), GroupMember(b, dead=True), GroupMember(c)])
    assert group.members == (GroupMember(a), GroupMember(b, True), GroupMember(c))
    assert group.ids == (a, b, c)
    assert group.alive == (a, c)
    assert group.dead == (b,)
    assert group.is_alive(a)
    assert not group.is_alive(b)
    assert b in group
    assert MemberId("d", 1) not in group
