"""Members state: what one member knows of every publisher's messages.

For each publisher (alive, or dead and not yet erased) a member keeps
gm's ``#member{}``: the publications it has seen but whose acknowledgement
it has not (``pending``), the last publication number it saw and the last
acknowledgement. For itself and for the dead members it has inherited, the
last acknowledgement is the last one *retired* (it came round), not merely
forwarded.

The functions here are the pure heart of the protocol: how an activity
changes the state and what goes on to the right, and how a catch-up from a
new left neighbour becomes an activity (the prefix / common / suffix
delta). They mutate the ``MembersState`` they are given and do nothing else:
no sends, no store, no trio.

Pending publications of one publisher are consecutive numbers, so they are
kept as a first number and a list: joining a run of publications is a list
extend, retiring acknowledgements a slice delete.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._ids import MemberId
from .._packed import encoded_bound
from .messages import ActivityEntry, MemberSnapshot
from .view import View


class PublisherState:
    """gm's ``#member{pending_ack, last_pub, last_ack}`` for one publisher."""

    __slots__ = ("first", "last_ack", "last_pub", "pending")

    def __init__(
        self,
        first: int = 0,
        pending: list[Any] | None = None,
        last_pub: int = -1,
        last_ack: int = -1,
    ) -> None:
        #: Number of ``pending[0]``.
        self.first = first
        self.pending: list[Any] = [] if pending is None else pending
        self.last_pub = last_pub
        self.last_ack = last_ack

    @property
    def pending_last(self) -> int:
        """Number of the last pending publication (``first - 1`` if none)."""
        return self.first + len(self.pending) - 1

    def join_pubs(self, first: int, pubs: tuple[Any, ...] | list[Any]) -> int:
        """Append publications numbered from ``first``; return the last number.

        Publications already seen (numbered up to ``last_pub``) are skipped,
        so a duplicate can never be delivered twice.
        """
        skip = self.last_pub + 1 - first
        if skip > 0:
            if skip >= len(pubs):
                return self.last_pub
            pubs = pubs[skip:]
            first += skip
        if not self.pending:
            self.first = first
        self.pending.extend(pubs)
        self.last_pub = first + len(pubs) - 1
        return self.last_pub

    def retire_through(self, last: int) -> None:
        """Forget pending publications numbered up to ``last``."""
        count = last - self.first + 1
        if count <= 0:
            return
        if count >= len(self.pending):
            self.first += len(self.pending)
            self.pending.clear()
        else:
            del self.pending[:count]
            self.first += count

    def snapshot(self) -> MemberSnapshot:
        return MemberSnapshot(self.first, tuple(self.pending), self.last_pub, self.last_ack)

    @classmethod
    def from_snapshot(cls, snap: MemberSnapshot) -> PublisherState:
        return cls(snap.pending_first, list(snap.pending), snap.last_pub, snap.last_ack)

    def __repr__(self) -> str:
        return (
            f"PublisherState(first={self.first}, pending={len(self.pending)}, "
            f"last_pub={self.last_pub}, last_ack={self.last_ack})"
        )


MembersState = dict[MemberId, PublisherState]

_BLANK = MemberSnapshot(0, (), -1, -1)


def state_for(members_state: MembersState, publisher: MemberId) -> PublisherState:
    """The state of ``publisher``, blank (and stored) if it had none."""
    state = members_state.get(publisher)
    if state is None:
        state = members_state[publisher] = PublisherState()
    return state


def calculate_activity(
    members_state: MembersState, entries: Iterable[ActivityEntry], self_id: MemberId, view: View
) -> tuple[list[ActivityEntry], int]:
    """Apply an activity from the left; return what goes right and own acks.

    Entries about publishers the view no longer knows are dropped.

    For a publisher this member speaks for (itself or an inherited dead
    member) publications that come back have been everywhere: they become
    acknowledgements, sent on in their place. For any other publisher the
    publications join its pending list, the acknowledgements retire from it,
    and the entry goes on unchanged.

    Returns the outgoing entries and the number of the last of this member's
    own publications now acknowledged (-1 if none): confirms up to it can be
    answered.
    """
    out: list[ActivityEntry] = []
    own_acked = -1
    aliases = view[self_id].aliases
    known = view.known
    for entry in entries:
        publisher = entry.publisher
        if publisher not in known:
            # Erased from the ring: its heir saw its last publication
            # acknowledged, so nothing about it is in flight any more; this
            # entry is stale. Passing it on would send it round for ever
            # (the loop of RabbitMQ PR 1431; found again by the explorer).
            continue
        state = members_state.get(publisher)
        if state is None:
            state = members_state[publisher] = PublisherState()
        if publisher == self_id or publisher in aliases:
            acked_count = 0
            acked_last = -1
            if entry.pubs and state.pending:
                lo = max(entry.first, state.first)
                hi = min(entry.first + len(entry.pubs) - 1, state.pending_last)
                if hi >= lo:
                    # Publications that are not pending here are unmatched:
                    # dropped (RabbitMQ issue 749), never looped on.
                    acked_count, acked_last = hi - lo + 1, hi
                    state.retire_through(hi)
            if entry.acks and entry.ack_last > state.last_ack:
                state.last_ack = entry.ack_last
            if acked_count:
                out.append(ActivityEntry(publisher, acks=acked_count, ack_last=acked_last))
                if publisher == self_id:
                    own_acked = acked_last
        else:
            if entry.pubs:
                state.join_pubs(entry.first, entry.pubs)
            if entry.acks:
                state.retire_through(entry.ack_last)
                if entry.ack_last > state.last_ack:
                    state.last_ack = entry.ack_last
            out.append(entry)
    return out, own_acked


def split_entries(entries: list[ActivityEntry], budget: int) -> list[list[ActivityEntry]]:
    """Cut ``entries`` into parts whose encoded publications fit ``budget`` bytes.

    Publications are ``(value, bytes)`` pairs or plain values
    (``trio_gm._packed``), as on a node with a network side, the only place
    where a budget applies. One
    publisher's run may be cut in several; its
    acknowledgements go with the last piece, so that processing the parts in
    order is processing ``entries``. A part holds at least one publication,
    however large.
    """
    parts: list[list[ActivityEntry]] = [[]]
    size = 0
    for entry in entries:
        pubs = entry.pubs
        start = 0
        for index, pub in enumerate(pubs):
            nbytes = encoded_bound(pub)
            if size + nbytes > budget and (index > start or parts[-1]):
                if index > start:
                    piece = pubs[start:index]
                    parts[-1].append(ActivityEntry(entry.publisher, entry.first + start, piece))
                parts.append([])
                size = 0
                start = index
            size += nbytes
        if start == 0:
            parts[-1].append(entry)
        else:
            parts[-1].append(
                ActivityEntry(
                    entry.publisher,
                    entry.first + start,
                    pubs[start:],
                    acks=entry.acks,
                    ack_last=entry.ack_last,
                )
            )
    return [part for part in parts if part]


def catchup_entries(
    members_state: MembersState,
    left_state: dict[MemberId, MemberSnapshot],
    self_id: MemberId,
    view: View,
) -> list[ActivityEntry]:
    """Turn a new left neighbour's state into the activity this member missed.

    The delta per publisher (gm's ``find_prefix_common_suffix``):

    * for a publisher this member does not speak for, pending publications
      here that the left no longer has were acknowledged upstream (the
      *prefix*: acks missed), and publications the left has beyond the last
      seen here were published upstream (the *suffix*: pubs missed);
    * for a publisher it speaks for, publications both hold have been all
      the way round (the *common* part): they come back as publications, to
      be turned into acknowledgements; the left's last acknowledgement is
      taken over.

    Only the alias ``last_ack`` is written here; the entries returned are
    then applied with :func:`calculate_activity`.
    """
    entries: list[ActivityEntry] = []
    aliases = view[self_id].aliases
    for publisher in sorted(set(members_state) | set(left_state)):
        mine = state_for(members_state, publisher)
        left = left_state.get(publisher, _BLANK)
        left_last = left.pending_first + len(left.pending) - 1
        if publisher == self_id or publisher in aliases:
            lo = max(left.pending_first, mine.first)
            hi = min(left_last, mine.pending_last)
            # gm takes the left's last_ack as it is. But the left may hold a
            # stale copy (a joiner copies its left's entry) while the acks
            # that would have moved ours on died with a member: then the
            # dead alias is never erased (found by the schedule explorer).
            # What the left has retired, acks have carried from us all the
            # way round to it: count it as acknowledged, and never go back.
            retired = left.pending_first - 1 if left.pending else left.last_pub
            mine.last_ack = max(mine.last_ack, left.last_ack, min(retired, mine.last_pub))
            if left.pending and mine.pending and hi >= lo:
                pubs = left.pending[lo - left.pending_first : hi - left.pending_first + 1]
                entries.append(ActivityEntry(publisher, first=lo, pubs=pubs))
        else:
            acks = 0
            ack_last = -1
            if mine.pending:
                cut = left.pending_first if left.pending else mine.pending_last + 1
                ack_last = min(cut - 1, mine.pending_last)
                acks = max(0, ack_last - mine.first + 1)
            start = max(mine.last_pub + 1, left.pending_first)
            pubs = left.pending[start - left.pending_first :] if left.pending else ()
            if pubs or acks:
                entries.append(
                    ActivityEntry(
                        publisher,
                        first=start,
                        pubs=tuple(pubs),
                        acks=acks,
                        ack_last=ack_last if acks else -1,
                    )
                )
    return entries


def remove_erased_members(members_state: MembersState, view: View) -> MembersState:
    """Keep exactly the publishers the view still knows, blank for new ones."""
    return {member: members_state.get(member) or PublisherState() for member in view.known}


def erasable_aliases(members_state: MembersState, self_id: MemberId, view: View) -> list[MemberId]:
    """Inherited dead members with nothing in flight: their last pub was acked."""
    erasable = []
    for alias in view[self_id].aliases:
        state = members_state.get(alias)
        if state is None or state.last_pub == state.last_ack:
            erasable.append(alias)
    return sorted(erasable)


def has_pending(members_state: MembersState | None) -> bool:
    """Whether any publication this member knows of is still unacknowledged."""
    if not members_state:
        return False
    return any(state.last_pub != state.last_ack for state in members_state.values())


def prepare_snapshot(members_state: MembersState) -> tuple[tuple[MemberId, MemberSnapshot], ...]:
    return tuple((member, state.snapshot()) for member, state in sorted(members_state.items()))


def build_members_state(
    snapshot: Iterable[tuple[MemberId, MemberSnapshot]],
) -> MembersState:
    return {member: PublisherState.from_snapshot(snap) for member, snap in snapshot}
