"""The messages members send each other: plain attrs values, nothing else.

They carry ids and numbers, never object references, so a transport can
encode them as they are. Every ring message carries the sender's view
version (gm's ``{'$gm', Ver, Msg}``): a receiver with an older view
refreshes it from the store before acting on the message (Lemma 3 in
``trio_gm.ring``).

Publication numbers of one publisher are consecutive, and both the pending
acknowledgements a member keeps for a publisher and the publications and
acknowledgements in one activity are runs of consecutive numbers. So a run is
sent as its first number plus the messages (``first``, ``msgs``) and a run of
acknowledgements as its last number and length: no per-message tuples.
"""

from __future__ import annotations

from typing import Any

import attrs

from .._ids import MemberId
from .._packed import PACKED


@attrs.frozen
class ActivityEntry:
    """What happened to one publisher's messages: new publications, then acks.

    ``pubs`` are publications numbered ``first``, ``first + 1``, ...
    (each a ``(value, bytes)`` pair on a node with a network side: see
    ``trio_gm._packed``);
    ``acks`` acknowledgements retire that many of the oldest pending
    publications, the last of them numbered ``ack_last``.
    """

    publisher: MemberId
    first: int = 0
    pubs: tuple[Any, ...] = attrs.field(default=(), metadata=PACKED)
    acks: int = 0
    ack_last: int = -1


@attrs.frozen
class Activity:
    """Publications and acknowledgements travelling right, from ``sender``."""

    version: int
    sender: MemberId
    entries: tuple[ActivityEntry, ...]


@attrs.frozen
class MemberSnapshot:
    """A member's knowledge of one publisher, as sent in a catch-up.

    ``pending`` are the publications not yet acknowledged, numbered from
    ``pending_first``; ``last_pub`` and ``last_ack`` the last seen.
    """

    pending_first: int
    pending: tuple[Any, ...] = attrs.field(metadata=PACKED)
    last_pub: int
    last_ack: int


@attrs.frozen
class Catchup:
    """A left neighbour's whole members state, sent to a new right neighbour."""

    version: int
    sender: MemberId
    state: tuple[tuple[MemberId, MemberSnapshot], ...]


@attrs.frozen
class CheckNeighbours:
    """ "My view changed: check yours" (a view refresh with no payload)."""

    version: int


RingMessage = Activity | Catchup | CheckNeighbours


@attrs.frozen
class AddOnRight:
    """The call a joiner makes to its chosen left: "record me on your right"."""

    new_member: MemberId


@attrs.frozen
class NotReady:
    """Reply to ``AddOnRight`` from a member still waiting for its own catch-up."""
