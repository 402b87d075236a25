"""The invariants the explorer checks, after every step and at the end.

See the package docstring for the exact formulation; the functions here
append one line per violation to ``harness.violations``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from ..._ids import MemberId
from ...ring.members_state import has_pending
from ...ring.messages import Activity, Catchup
from ...ring.view import group_to_view

if TYPE_CHECKING:
    from ._harness import Harness, Slot

PUB: Final = "publication"
ACK: Final = "acknowledgement"


def check_step(h: Harness) -> None:
    """Invariants that hold between any two steps."""
    _views_move_forward(h)
    _inherited_once(h)
    _well_formed(h)


def _views_move_forward(h: Harness) -> None:
    for slot in h.slots:
        if not h.running(slot) or not hasattr(slot.actor, "view"):
            continue
        version = slot.actor.view.version
        if version < slot.last_version:
            h.violation(f"{slot.label}'s view went back from v{slot.last_version} to v{version}")
        slot.last_version = version
        if h.group is not None and version > h.group.version:
            h.violation(f"{slot.label}'s view v{version} is newer than the store's")


def _inherited_once(h: Harness) -> None:
    group = h.group
    if group is None or not group.alive:
        return
    stored = group_to_view(group)
    for dead in group.dead:
        heirs = [m for m in stored.alive if dead in stored[m].aliases]
        if len(heirs) != 1:
            h.violation(f"dead {h.name(dead)} is inherited by {len(heirs)} members in the store")
        believers = [
            slot.label
            for slot in h.slots
            if h.running(slot)
            and hasattr(slot.actor, "view")
            and slot.id is not None
            and slot.id in slot.actor.view.members
            and dead in slot.actor.view[slot.id].aliases
        ]
        if len(believers) > 1:
            h.violation(
                f"dead {h.name(dead)} is inherited by {' and '.join(believers)} at once "
                "(each by its own view)"
            )


# -- the proof sketch's well-formedness ------------------------------------


def _knows_pub(slot: Slot, publisher: MemberId, n: int) -> bool:
    state = slot.actor.members_state
    if state is None:
        return False
    ps = state.get(publisher)
    return ps is not None and ps.last_pub >= n


def _knows_ack(slot: Slot, publisher: MemberId, n: int) -> bool:
    state = slot.actor.members_state
    if state is None:
        return False
    ps = state.get(publisher)
    return ps is not None and ps.last_pub >= n and n < ps.first


def _carries(msg: Activity | Catchup, kind: str, publisher: MemberId, n: int) -> bool:
    if type(msg) is Activity:
        for e in msg.entries:
            if e.publisher != publisher:
                continue
            if kind == PUB and e.pubs and e.first <= n < e.first + len(e.pubs):
                return True
            if kind == ACK and e.acks and n <= e.ack_last:
                return True
        return False
    assert type(msg) is Catchup
    for member, snap in msg.state:
        if member != publisher:
            continue
        in_pending = snap.pending_first <= n < snap.pending_first + len(snap.pending)
        if kind == PUB:
            return in_pending
        return snap.last_pub >= n and not in_pending
    return False


def _between(ids: tuple[MemberId, ...], a: MemberId, b: MemberId) -> list[MemberId]:
    """The stored ring strictly after ``a`` and before ``b`` (all of it if a == b)."""
    i, j = ids.index(a), ids.index(b)
    out = []
    k = (i + 1) % len(ids)
    while k != j:
        out.append(ids[k])
        k = (k + 1) % len(ids)
    return out


def _in_transit(h: Harness, prev: Slot, x: Slot, kind: str, publisher: MemberId, n: int) -> bool:
    """Whether ``kind`` of (publisher, n) will reach ``x`` from its upstream ``prev``."""
    assert prev.id is not None
    assert x.id is not None
    assert h.group is not None
    if prev.actor.right[0] != x.id:
        # prev does not know x is its right yet: when it learns, it sends x
        # a catch-up with its whole state, which holds what prev knows.
        return True
    senders = {prev.id, *_between(h.group.ids, prev.id, x.id)}
    waiting: Iterable[Activity | Catchup] = [
        *(m for m in x.inbox if m.sender in senders),
        *(
            item
            for sender in sorted(senders)
            for item in h.links.get((sender, x.id), ())
            if type(item) is Activity or type(item) is Catchup
        ),
    ]
    has_state = x.actor.members_state is not None
    for msg in waiting:
        if type(msg) is Catchup:
            has_state = True
        elif not has_state:
            continue  # an activity before the first catch-up is dropped
        if _carries(msg, kind, publisher, n):
            return True
    return False


def _heir(h: Harness, publisher: MemberId, running: dict[MemberId, Slot]) -> MemberId | None:
    """Who speaks for ``publisher``: itself if running, else the next running member."""
    group = h.group
    assert group is not None
    ids = group.ids
    if publisher not in ids:
        return None
    if publisher in running:
        return publisher
    i = ids.index(publisher)
    for k in range(1, len(ids)):
        member = ids[(i + k) % len(ids)]
        if member in running:
            return member
    return None


def _well_formed(h: Harness) -> None:
    """Each pending entry has its publication or its acknowledgement in flight."""
    group = h.group
    if group is None:
        return
    running = {s.id: s for s in h.slots if s.id is not None and h.running(s)}
    ring = [m for m in group.ids if m in running]
    if not ring:
        return
    for m in ring:
        slot = running[m]
        state = slot.actor.members_state
        if state is None:
            continue
        for publisher, ps in sorted(state.items()):
            if not ps.pending:
                continue
            heir = _heir(h, publisher, running)
            if heir is None:
                h.violation(
                    f"{slot.label} holds pending publications {ps.first}.."
                    f"{ps.pending_last} of {h.name(publisher)}, which is erased from the ring"
                )
                continue
            for n in range(ps.first, ps.pending_last + 1):
                broken = _entry_in_flight(h, ring, running, m, publisher, heir, n)
                if broken is not None:
                    h.violation(
                        f"{slot.label}'s pending publication {n} of {h.name(publisher)} "
                        f"(spoken for by {h.name(heir)}): {broken}"
                    )
                    break


def _entry_in_flight(
    h: Harness,
    ring: list[MemberId],
    running: dict[MemberId, Slot],
    m: MemberId,
    publisher: MemberId,
    heir: MemberId,
    n: int,
) -> str | None:
    """None if the entry is well formed, else what is wrong."""
    heir_slot = running[heir]
    heir_state = heir_slot.actor.members_state
    # An heir that dropped the publisher's state has seen everything of it
    # acknowledged (it is erasing it): from there, the ack is what travels.
    erasing = heir_state is not None and publisher not in heir_state
    converted = heir != m and (erasing or _knows_ack(heir_slot, publisher, n))
    if converted:
        kind, start, end = ACK, heir, m
    else:
        kind, start, end = PUB, m, heir
    # The path downstream from start to end (the whole ring if they are one).
    i = ring.index(start)
    path = []
    k = (i + 1) % len(ring)
    while True:
        path.append(ring[k])
        if ring[k] == end:
            break
        k = (k + 1) % len(ring)
    prev = running[start]
    prev_has = True
    for member in path:
        x = running[member]
        if member == end:
            has = False  # the publication must come back / the ack must arrive
        elif kind == PUB:
            has = _knows_pub(x, publisher, n)
        else:
            has = _knows_ack(x, publisher, n)
        if prev_has and not has and not _in_transit(h, prev, x, kind, publisher, n):
            return (
                f"its {kind} is known to {prev.label} but not to {x.label}, its right, "
                f"and nothing on the way to {x.label} carries it"
            )
        prev, prev_has = x, has
    return None


# -- the end, after the drain ---------------------------------------------------


def check_end(h: Harness) -> None:
    """Once everything drained: nothing lost, all in order, all answered."""
    group = h.group
    survivors = [s for s in h.slots if h.running(s)]
    ids = {s.id for s in survivors}
    for slot in survivors:
        actor = slot.actor
        if actor.members_state is None:
            h.violation(f"{slot.label} never got its first catch-up")
            continue
        if has_pending(actor.members_state) or actor.buffer or actor.incoming:
            unacked = {p: s for p, s in actor.members_state.items() if s.last_pub != s.last_ack}
            pending = {
                h.name(p): (s.first, s.pending_last, s.last_pub, s.last_ack)
                for p, s in unacked.items()
            }
            h.violation(
                f"{slot.label} still holds unacknowledged messages "
                f"(first, pending last, last pub, last ack): {pending}"
            )
        if group is not None and set(actor.view.alive) != set(group.alive):
            h.violation(
                f"{slot.label}'s view v{actor.view.version} has alive "
                f"{', '.join(map(h.name, actor.view.alive))}, the store's "
                f"v{group.version} {', '.join(map(h.name, group.alive))}"
            )
    if group is not None:
        if group.dead:
            h.violation(f"dead members never erased: {', '.join(map(h.name, group.dead))}")
        if set(group.alive) != ids:
            h.violation(
                f"the stored ring ({', '.join(map(h.name, group.alive))}) is not the running "
                f"members ({', '.join(s.label for s in survivors)})"
            )
    _order(h)
    _loss(h, survivors)
    for record in h.confirms:
        if record.outcome is None:
            h.violation(f"confirmed broadcast {record.msg} from {record.slot.label} never returned")
        elif record.outcome != "ok" and h.running(record.slot):
            h.violation(f"confirmed broadcast {record.msg} failed: {record.outcome}")
    for slot in h.slots:
        if slot.orphaned:
            if h.running(slot):
                h.violation(f"{slot.label} joined as an orphan but runs")
        elif slot.killed or slot.leaving:
            if h.running(slot):
                h.violation(f"{slot.label} was {'killed' if slot.killed else 'left'} but runs")
            elif slot.leaving and not slot.killed and slot.terminated != "normal":
                h.violation(f"{slot.label} left but handle_terminate got {slot.terminated!r}")
        elif not h.running(slot):
            h.violation(f"{slot.label} stopped on its own ({slot.down_reason!r})")


def _order(h: Harness) -> None:
    """Each member gets each sender's messages in publication order, no gap, no duplicate."""
    for slot in h.slots:
        for sender, msgs in slot.delivered.items():
            numbers = [h.published[msg].number for msg in msgs]
            for i in range(1, len(numbers)):
                a, b = numbers[i - 1], numbers[i]
                if b != a + 1:
                    what = "duplicate" if b <= a else "gap"
                    h.violation(
                        f"{slot.label}: {what} from {h.name(sender)}: {msgs[i]} after {msgs[i - 1]}"
                    )
                    break


def _loss(h: Harness, survivors: list[Slot]) -> None:
    ids = {s.id for s in survivors}
    for msg, pub in sorted(h.published.items()):
        receivers = [s for s in survivors if msg in s.delivered_msgs]
        if pub.sender not in ids and not receivers:
            continue  # it died with its publisher: never "sent" to a survivor
        missing = [s for s in survivors if s.id in pub.group and s not in receivers]
        if missing:
            h.violation(
                f"message {msg[1]} of {h.name(pub.sender)} lost for "
                f"{', '.join(s.label for s in missing)} "
                "(in the group when it was published, still running)"
            )
