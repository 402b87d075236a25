"""The invariants the explorer checks, after every step and at the end.

See the package docstring for the exact formulation; the functions here
append one line per violation to ``harness.violations``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from ..._ids import MemberId
from ...ring.core import Phase
from ...ring.members_state import has_pending
from ...ring.messages import Activity, Catchup
from ...ring.view import group_to_view

if TYPE_CHECKING:
    from ._harness import Harness, Slot

PUB: Final = "publication"
ACK: Final = "acknowledgement"


#: What of a member the well-formedness check reads, apart from messages:
#: its right and view version, its publishers (in its state's order) and
#: for each (first, pending count, last publication). None: stopped, no
#: members state yet, or replaying held messages (then anything may
#: change: the checks recheck everything).
Signature = tuple[MemberId, int, tuple[MemberId, ...], tuple[tuple[int, int, int], ...]] | None


def signature(slot: Slot) -> Signature:
    """What of ``slot`` :func:`changed` compares (see :data:`Signature`)."""
    core = slot.core
    state = core.members_state
    if slot.stopped or state is None or core.replaying:
        return None
    return (
        core.right[0],
        core.view.version,
        tuple(state),
        tuple([(ps.first, len(ps.pending), ps.last_pub) for ps in state.values()]),
    )


#: Run the straightforward well-formedness check too after every step and
#: insist that it finds what the fast one does (the tests set it).
CROSS_CHECK = False


def check_step(h: Harness) -> None:
    """Invariants that hold between any two steps."""
    handled = bool(h.touched)
    only = changed(h)
    if CROSS_CHECK:
        _check_quiet(h, only is None or handled)
    if only is None or handled or CROSS_CHECK:
        # (Otherwise no member handled anything since the last check, and the
        # stored ring, the members and the cuts are the same: what these two
        # read (stops, phases, views, the stored ring) is as it was, and it
        # passed then.)
        _views_move_forward(h)
        _inherited_once(h)
    if not CROSS_CHECK:
        if only is None or only:
            _check_well_formed(h, only, h.violation)
        return
    _clear_caches(h)
    expected: list[str] = []
    _well_formed(h, None, expected.append)
    found: list[str] = []
    if only is None or only:
        _check_well_formed(h, only, found.append)
    if found != expected:
        raise AssertionError(
            f"the fast check found {found}, the straightforward one {expected}"
            + (f" (rechecking {sorted(map(h.name, only))})" if only is not None else "")
        )
    for what in found:
        h.violation(what)


def _check_quiet(h: Harness, moved: bool) -> None:
    """With ``CROSS_CHECK``: when :func:`check_step` would skip the view and
    inheritance checks (``moved`` false), nothing they read changed."""
    now = [(s.stopped, s.core.phase, s.core.view) for s in h.slots]
    last = h.quiet_seen
    h.quiet_seen = (h.group, now)
    if moved or last is None:
        return
    if last[0] is not h.group or len(last[1]) != len(now):
        raise AssertionError("the stored ring or the members changed in a quiet step")
    for slot, (was, is_) in zip(h.slots, zip(last[1], now, strict=True), strict=False):
        if was[0] != is_[0] or was[1] is not is_[1] or was[2] is not is_[2]:
            raise AssertionError(f"{slot.label} changed in a quiet step")


def _check_well_formed(
    h: Harness, only: set[MemberId] | None, report: Callable[[str], None]
) -> None:
    """:func:`_well_formed_fast`, and if it finds a break, :func:`_well_formed` says what."""
    _clear_caches(h)
    if _well_formed_fast(h, only):
        return
    _clear_caches(h)
    broken: list[str] = []
    _well_formed(h, only, broken.append)
    if CROSS_CHECK and not broken:
        raise AssertionError("the fast check finds a break the straightforward one does not")
    for what in broken:
        report(what)


def _clear_caches(h: Harness) -> None:
    h.transit_cache = {}
    h.covered_cache = {}
    h.path_cache = {}


def changed(h: Harness) -> set[MemberId] | None:
    """The publishers whose well-formedness may have changed since the last check.

    None: any of them (the stored ring, the running members or a cut
    changed, or a member handed an event had or has no members state, or
    replays held messages, or its right or view changed).

    Otherwise each publisher whose state changed at a member handed an
    event (the harness remembers its :func:`signature` before),
    or which an activity that left what travels (or moved within it where
    the order matters) names (the harness records it,
    :meth:`~._harness.Harness.moved`; a message that joins only adds to what
    a hop carries, which cannot break what was well formed). For any other
    publisher ``P``, everything :func:`_well_formed` reads about it is as
    at the last check, which found it well formed: the ring (stored ring,
    running members, cuts), each member's right, view version, whether it
    has a state and its ``first``, pending count and ``last_pub`` for P,
    and every hop's waiting messages as far as they concern P (activity
    entries of P, catch-ups; an entry of another publisher is never
    looked at for P, and a catch-up makes everything change). So it is
    well formed still, and is not looked at again.
    """
    dirty = h.dirty
    key = (h.group, len(h.cut), len(h.slots))
    last = h.checked
    if last is None or last[0] is not key[0] or last[1:] != key[1:]:
        dirty = None
    if dirty is not None:
        for slot, before in h.touched.values():
            after = signature(slot)
            if before == after:
                continue
            if before is None or after is None or before[:3] != after[:3]:
                dirty = None
                break
            for publisher, was, now in zip(after[2], before[3], after[3], strict=True):
                if was != now:
                    dirty.add(publisher)
    h.touched.clear()
    h.dirty = set()
    h.checked = key
    return dirty


def _views_move_forward(h: Harness) -> None:
    for slot in h.slots:
        if not h.running(slot) or slot.core.phase is Phase.JOINING:
            continue
        version = slot.core.view.version
        if version < slot.last_version:
            h.violation(f"{slot.label}'s view went back from v{slot.last_version} to v{version}")
        slot.last_version = version
        if h.group is not None and version > h.group.version:
            h.violation(f"{slot.label}'s view v{version} is newer than the store's")


def _inherited_once(h: Harness) -> None:
    group = h.group
    if group is None:
        return
    alive, _ids, dead_ids = _ring_of(h)
    if not alive:
        return
    if group is not h.heirs_checked:
        # (A property of the stored ring alone: checked once per version.)
        h.heirs_checked = group
        stored = group_to_view(group)
        for dead in group.dead:
            heirs = [m for m in stored.alive if dead in stored[m].aliases]
            if len(heirs) != 1:
                h.violation(
                    f"dead {h.name(dead)} is inherited by {len(heirs)} members in the store"
                )
    for dead in dead_ids:
        believers = [
            slot.label
            for slot in h.slots
            if h.running(slot)
            and slot.id in alive  # (recorded dead, it stops once it finds out)
            and slot.core.phase is not Phase.JOINING
            and slot.id is not None
            and slot.id in slot.core.view.members
            and dead in slot.core.view[slot.id].aliases
        ]
        if len(believers) > 1:
            h.violation(
                f"dead {h.name(dead)} is inherited by {' and '.join(believers)} at once "
                "(each by its own view)"
            )


# -- the proof sketch's well-formedness ------------------------------------


def _knows_pub(slot: Slot, publisher: MemberId, n: int) -> bool:
    state = slot.core.members_state
    if state is None:
        return False
    ps = state.get(publisher)
    return ps is not None and ps.last_pub >= n


def _knows_ack(slot: Slot, publisher: MemberId, n: int) -> bool:
    state = slot.core.members_state
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
    waiting = _waiting(h, prev, x)
    if waiting is None:
        return True
    return any(_carries(msg, kind, publisher, n) for msg in waiting)


def _covered(
    h: Harness,
    prev: Slot,
    x: Slot,
    kind: str,
    publisher: MemberId,
    waiting_of: Callable[[Harness, Slot, Slot], list[Activity | Catchup] | None] | None = None,
) -> list[tuple[int, int]]:
    """The numbers whose ``kind`` the hop ``prev`` -> ``x`` carries, as sorted,
    merged intervals (all of them when it owes nothing): :func:`_carries` for
    every n at once. Computed once per hop, kind and publisher and check.
    """
    key = (prev.index, x.index, kind, publisher)
    cache = h.covered_cache
    found = cache.get(key)
    if found is not None:
        return found
    waiting = (waiting_of or _waiting)(h, prev, x)
    spans: list[tuple[int, int]] = []
    if waiting is None:
        spans.append((_NEVER, _ALWAYS))
    else:
        for msg in waiting:
            if type(msg) is Activity:
                for e in msg.entries:
                    if e.publisher != publisher:
                        continue
                    if kind == PUB and e.pubs:
                        spans.append((e.first, e.first + len(e.pubs) - 1))
                    elif kind == ACK and e.acks:
                        spans.append((_NEVER, e.ack_last))
            elif type(msg) is Catchup:
                for member, snap in msg.state:
                    if member != publisher:
                        continue
                    pending_lo = snap.pending_first
                    pending_hi = snap.pending_first + len(snap.pending) - 1
                    if kind == PUB:
                        if pending_lo <= pending_hi:
                            spans.append((pending_lo, pending_hi))
                    else:
                        # Known (up to last_pub) and not pending.
                        spans.append((_NEVER, min(snap.last_pub, pending_lo - 1)))
                        if pending_hi < snap.last_pub:
                            spans.append((pending_hi + 1, snap.last_pub))
                    break
    spans.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    cache[key] = merged
    return merged


def _first_uncovered(spans: list[tuple[int, int]], lo: int, hi: int) -> int | None:
    """The first n in ``lo..hi`` outside ``spans`` (sorted, merged), or None."""
    n = lo
    for a, b in spans:
        if b < n:
            continue
        if a > n:
            return n
        n = b + 1
        if n > hi:
            return None
    return n if n <= hi else None


def _waiting(h: Harness, prev: Slot, x: Slot) -> list[Activity | Catchup] | None:
    """What waits for ``x`` from ``prev`` (or dead members between them) and counts.

    None: the hop owes nothing of what it holds (see :func:`_in_transit`).
    Computed once per pair and check.
    """
    key = (prev.index, x.index)
    cache = h.transit_cache
    if key in cache:
        return cache[key]
    result: list[Activity | Catchup] | None
    assert h.group is not None
    if (prev.id, x.id) in h.cut or prev.core.right[0] != x.id:
        # A partition cut this hop: the DOWN it gave prev is on its way, and
        # prev will record x dead (then send its new right a catch-up) or
        # find itself recorded dead and stop. Nothing is owed over the cut.
        # Or prev does not know x is its right yet: when it learns, it sends
        # x a catch-up with its whole state, which holds what prev knows.
        result = None
    else:
        senders = {prev.id, *_between(h.group.ids, prev.id, x.id)}
        waiting: Iterable[Activity | Catchup] = [
            # Held by x until its first catch-up, and now being handled: first.
            *(
                m
                for m in x.core.replaying
                if (type(m) is Activity or type(m) is Catchup) and m.sender in senders
            ),
            *(m for m in x.waiting_ring_messages() if m.sender in senders),
            *(
                item
                for sender in sorted(senders)
                for item in h.links.get((sender, x.id), ())
                if type(item) is Activity or type(item) is Catchup
            ),
        ]
        has_state = x.core.members_state is not None
        result = []
        for msg in waiting:
            if type(msg) is Catchup:
                has_state = True
            elif not has_state:
                continue  # an activity before the first catch-up is not counted
            result.append(msg)
    cache[key] = result
    return result


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


def _well_formed(h: Harness, only: set[MemberId] | None, report: Callable[[str], None]) -> None:
    """Each pending entry has its publication or its acknowledgement in flight.

    Only for the publishers in ``only`` (None: all of them).
    """
    group = h.group
    if group is None:
        return
    # A member recorded dead while it still runs (a partition) is out of the
    # ring: it stops once it finds out, and nothing is owed to it.
    running = {s.id: s for s in h.slots if h.running(s) and group.is_alive(s.id)}
    ring = [m for m in group.ids if m in running]
    if not ring:
        return
    heirs: dict[MemberId, MemberId | None] = {}
    for m in ring:
        slot = running[m]
        state = slot.core.members_state
        if state is None:
            continue
        for publisher, ps in state.items():
            if not ps.pending or (only is not None and publisher not in only):
                continue
            if publisher in heirs:
                heir = heirs[publisher]
            else:
                heir = heirs[publisher] = _heir(h, publisher, running)
            if heir is None:
                if slot.core.view.version < group.version:
                    # Erased after its view: it drops the publisher's state
                    # when it adopts a newer one (the end checks hold it to
                    # that), and what retires the entries may still come.
                    continue
                report(
                    f"{slot.label} holds pending publications {ps.first}.."
                    f"{ps.pending_last} of {h.name(publisher)}, which is erased from the ring"
                )
                continue
            n = _first_broken(h, ring, running, m, publisher, heir, ps.first, ps.pending_last)
            if n is not None:
                broken = _entry_in_flight(h, ring, running, m, publisher, heir, n)
                assert broken is not None
                report(
                    f"{slot.label}'s pending publication {n} of {h.name(publisher)} "
                    f"(spoken for by {h.name(heir)}): {broken}"
                )


_NEVER: Final = -(2**62)
_ALWAYS: Final = 2**62


def _ring_of(
    h: Harness,
) -> tuple[frozenset[MemberId], tuple[MemberId, ...], tuple[MemberId, ...]]:
    """The stored group's alive ids, all its ids and its dead (once per stored group)."""
    group = h.group
    assert group is not None
    cached = h.group_info
    if cached is None or cached[0] is not group:
        cached = h.group_info = (group, frozenset(group.alive), group.ids, group.dead)
        h.senders_cache = {}
    return cached[1], cached[2], cached[3]


def _running_ring(h: Harness) -> tuple[list[Slot], dict[MemberId, Slot], dict[MemberId, int]]:
    """_well_formed's ``ring`` as slots, its ``running``, and each one's place in the ring.

    Once per stored group, number of members and number of stops.
    """
    key = (h.group, len(h.slots), h.stops)
    cached = h.ring_cache
    if cached is not None and cached[0][0] is key[0] and cached[0][1:] == key[1:]:
        return cached[1], cached[2], cached[3]
    alive, ids, _dead = _ring_of(h)
    by_id = {s.id: s for s in h.slots if not s.stopped and s.id in alive}
    ring = [by_id[m] for m in ids if m in by_id]
    running = {s.id: s for s in ring}
    position = {s.id: k for k, s in enumerate(ring)}
    h.ring_cache = (key, ring, running, position)
    return ring, running, position


def _waiting_fast(h: Harness, prev: Slot, x: Slot) -> list[Activity | Catchup] | None:
    """:func:`_waiting` as a multiset, which is all :func:`_covered` needs.

    When ``x`` has its members state every message counts and the order
    does not matter: the mailbox is read unsorted and the senders between
    the two come from a cache per stored group. Otherwise :func:`_waiting`.
    """
    key = (prev.index, x.index)
    cache = h.transit_cache
    if key in cache:
        return cache[key]
    if x.core.members_state is None:
        return _waiting(h, prev, x)
    result: list[Activity | Catchup] | None
    if (prev.id, x.id) in h.cut or prev.core.right[0] != x.id:
        result = None  # (as _waiting says)
    else:
        _ring_of(h)
        senders = h.senders_cache.get(key)
        if senders is None:
            assert h.group is not None
            senders = h.senders_cache[key] = frozenset(
                {prev.id, *_between(h.group.ids, prev.id, x.id)}
            )
        result = [
            m
            for m in x.core.replaying
            if (type(m) is Activity or type(m) is Catchup) and m.sender in senders
        ]
        for _p, _s, m in x.sorted:
            if (type(m) is Activity or type(m) is Catchup) and m.sender in senders:
                result.append(m)
        for m in x.inbound:
            if (type(m) is Activity or type(m) is Catchup) and m.sender in senders:
                result.append(m)
        links = h.links
        for sender in senders:
            queue = links.get((sender, x.id))
            if queue:
                for m in queue:
                    if type(m) is Activity or type(m) is Catchup:
                        result.append(m)
    cache[key] = result
    return result


def _well_formed_fast(h: Harness, only: set[MemberId] | None) -> bool:
    """Whether :func:`_well_formed` would find nothing (for the publishers in ``only``).

    The same check, publisher by publisher: rather than walk a path for
    every member holding the publisher's entries pending, walk the ring
    once (from the heir) for all of them. The path of a publication held by
    the member at distance r downstream of the heir crosses the hops r+1 ..
    L (back into the heir); an acknowledgement's, the hops 1 .. r (from the
    heir). On each hop the numbers owed by every holder are what it holds
    (its own interval, :func:`_first_broken`'s ``a..b``) cut to "known
    before the hop, not after": at the hop out of the holder itself
    "known before" is everything, at the hop into the path's end "known
    after" is nothing (as :func:`_first_broken` walks it). A hop breaks
    some entry iff a piece of the union is not covered by what it carries
    (:func:`_covered`): the union is kept of the holders further up the
    path, and a holder's own piece is looked at on its own.
    """
    group = h.group
    if group is None:
        return True
    ring_slots, running, position = _running_ring(h)
    if not ring_slots:
        return True
    holders: dict[MemberId, list[tuple[int, int, int]]] = {}
    for k, slot in enumerate(ring_slots):
        state = slot.core.members_state
        if state is None:
            continue
        for publisher, ps in state.items() if only is None else ((p, state.get(p)) for p in only):
            if ps is None or not ps.pending:
                continue
            entry = (k, ps.first, ps.first + len(ps.pending) - 1)
            found = holders.get(publisher)
            if found is None:
                holders[publisher] = [entry]
            else:
                found.append(entry)
    if not holders:
        return True
    for publisher, held in holders.items():
        heir = _heir(h, publisher, running)
        if heir is None:
            for k, _lo, _hi in held:
                if ring_slots[k].core.view.version >= group.version:
                    return False
            continue
        if not _publisher_well_formed(h, ring_slots, position[heir], publisher, held):
            return False
    return True


def _publisher_well_formed(
    h: Harness,
    ring: list[Slot],
    start: int,
    publisher: MemberId,
    held: list[tuple[int, int, int]],
) -> bool:
    size = len(ring)
    heir_slot = ring[start]
    heir_state = heir_slot.core.members_state
    erasing = heir_state is not None and publisher not in heir_state
    heir_acks = _last_known(heir_slot, ACK, publisher)
    # By distance downstream of the heir (0: the heir itself).
    pubs: dict[int, tuple[int, int]] = {}
    acks: dict[int, tuple[int, int]] = {}
    for k, lo, hi in held:
        r = (k - start) % size
        if r == 0:
            converted_to = lo - 1
        elif erasing:
            converted_to = hi
        else:
            converted_to = heir_acks
        if lo <= min(hi, converted_to):
            acks[r] = (lo, min(hi, converted_to))
        if max(lo, converted_to + 1) <= hi:
            pubs[r] = (max(lo, converted_to + 1), hi)
    # What each member knows, by distance (the heir's is never read).
    known_pub = [_NEVER] * size
    known_ack = [_NEVER] * size
    for r in range(1, size):
        state = ring[(start + r) % size].core.members_state
        ps = None if state is None else state.get(publisher)
        if ps is not None:
            known_pub[r] = ps.last_pub
            known_ack[r] = min(ps.last_pub, ps.first - 1)
    if pubs:
        union: list[tuple[int, int]] = []
        for j in range(1, size + 1):
            after = _NEVER if j == size else known_pub[j]
            pieces = []
            own = pubs.get(j - 1)
            if own is not None and max(own[0], after + 1) <= own[1]:
                pieces.append((max(own[0], after + 1), own[1]))
            _clip_into(pieces, union, after, known_pub[j - 1])
            if pieces and _hop_misses(h, ring, (start + j) % size, PUB, publisher, pieces):
                return False
            if own is not None:
                union = _merge_in(union, own)
    if acks:
        union = []
        for j in range(size - 1, 0, -1):
            before = _ALWAYS if j == 1 else known_ack[j - 1]
            pieces = []
            own = acks.get(j)
            if own is not None and own[0] <= min(own[1], before):
                pieces.append((own[0], min(own[1], before)))
            _clip_into(pieces, union, known_ack[j], before)
            if pieces and _hop_misses(h, ring, (start + j) % size, ACK, publisher, pieces):
                return False
            if own is not None:
                union = _merge_in(union, own)
    return True


def _clip_into(
    pieces: list[tuple[int, int]], union: list[tuple[int, int]], after: int, before: int
) -> None:
    """Append to ``pieces`` what of ``union`` is known before a hop (up to
    ``before``) and not after it (above ``after``)."""
    for a, b in union:
        a, b = max(a, after + 1), min(b, before)
        if a <= b:
            pieces.append((a, b))


def _hop_misses(
    h: Harness,
    ring: list[Slot],
    i: int,
    kind: str,
    publisher: MemberId,
    pieces: list[tuple[int, int]],
) -> bool:
    """Whether the hop into ``ring[i]`` fails to carry some number of ``pieces``."""
    prev, x = ring[i - 1], ring[i]
    spans = _covered(h, prev, x, kind, publisher, _waiting_fast)
    return any(_first_uncovered(spans, a, b) is not None for a, b in pieces)


def _merge_in(spans: list[tuple[int, int]], new: tuple[int, int]) -> list[tuple[int, int]]:
    """``spans`` (sorted, merged) with ``new`` added, sorted and merged."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted([*spans, new]):
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def _last_known(slot: Slot, kind: str, publisher: MemberId) -> int:
    """The largest n whose ``kind`` ``slot`` knows: it knows exactly those up to it.

    (Both :func:`_knows_pub` and :func:`_knows_ack` hold for a prefix of n.)
    """
    state = slot.core.members_state
    if state is None:
        return _NEVER
    ps = state.get(publisher)
    if ps is None:
        return _NEVER
    return ps.last_pub if kind == PUB else min(ps.last_pub, ps.first - 1)


def _path(ring: list[MemberId], start: MemberId, end: MemberId) -> list[MemberId]:
    """The ring downstream from ``start`` to ``end`` (all of it if they are one)."""
    i = ring.index(start)
    path = []
    k = (i + 1) % len(ring)
    while True:
        path.append(ring[k])
        if ring[k] == end:
            return path
        k = (k + 1) % len(ring)


def _first_broken(
    h: Harness,
    ring: list[MemberId],
    running: dict[MemberId, Slot],
    m: MemberId,
    publisher: MemberId,
    heir: MemberId,
    lo: int,
    hi: int,
) -> int | None:
    """The first n in ``lo..hi`` whose entry is not well formed (see :func:`_entry_in_flight`).

    The same check for a whole run of pending numbers at once: what a member
    knows is a prefix of the numbers, so on each hop the numbers owed (known
    before it, not after) are one interval, and only those need looking for
    in what travels.
    """
    heir_slot = running[heir]
    heir_state = heir_slot.core.members_state
    erasing = heir_state is not None and publisher not in heir_state
    if heir == m:
        converted_to = lo - 1
    elif erasing:
        converted_to = hi
    else:
        converted_to = _last_known(heir_slot, ACK, publisher)
    first: int | None = None
    for kind, a, b in ((ACK, lo, min(hi, converted_to)), (PUB, max(lo, converted_to + 1), hi)):
        if a > b:
            continue
        start, end = (heir, m) if kind == ACK else (m, heir)
        prev, prev_knows = running[start], _ALWAYS
        path = h.path_cache.get((start, end))
        if path is None:
            path = h.path_cache[(start, end)] = _path(ring, start, end)
        last = len(path) - 1
        for i, member in enumerate(path):
            x = running[member]
            knows = _NEVER if i == last else _last_known(x, kind, publisher)
            owed_lo, owed_hi = max(a, knows + 1), min(b, prev_knows)
            if first is not None:
                owed_hi = min(owed_hi, first - 1)
            if owed_lo <= owed_hi:
                n = _first_uncovered(_covered(h, prev, x, kind, publisher), owed_lo, owed_hi)
                if n is not None:
                    first = n
            prev, prev_knows = x, knows
    return first


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
    heir_state = heir_slot.core.members_state
    # An heir that dropped the publisher's state has seen everything of it
    # acknowledged (it is erasing it): from there, the ack is what travels.
    erasing = heir_state is not None and publisher not in heir_state
    converted = heir != m and (erasing or _knows_ack(heir_slot, publisher, n))
    if converted:
        kind, start, end = ACK, heir, m
    else:
        kind, start, end = PUB, m, heir
    path = _path(ring, start, end)
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
        core = slot.core
        if core.members_state is None:
            h.violation(f"{slot.label} never got its first catch-up")
            continue
        if has_pending(core.members_state) or core.buffer or core.incoming:
            unacked = {p: s for p, s in core.members_state.items() if s.last_pub != s.last_ack}
            pending = {
                h.name(p): (s.first, s.pending_last, s.last_pub, s.last_ack)
                for p, s in unacked.items()
            }
            h.violation(
                f"{slot.label} still holds unacknowledged messages "
                f"(first, pending last, last pub, last ack): {pending}"
            )
        if group is not None and set(core.view.alive) != set(group.alive):
            h.violation(
                f"{slot.label}'s view v{core.view.version} has alive "
                f"{', '.join(map(h.name, core.view.alive))}, the store's "
                f"v{group.version} {', '.join(map(h.name, group.alive))}"
            )
    if group is not None and survivors:
        # (With no survivor the stored ring is whatever the last one left:
        # the next member to join prunes and recreates it.)
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
            if slot.partitioned and slot.stop_reason == "shutdown":
                continue  # recorded dead by the other side of its partition
            h.violation(f"{slot.label} stopped on its own ({slot.stop_reason!r})")


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
