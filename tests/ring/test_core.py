"""RingCore driven directly: events in, effects out, no trio and no clock.

Each test plays the driver's part by hand (or through :class:`Ring`, a few
lines of routing: sends queued FIFO, store effects answered by the ops'
``apply`` on one in-memory group, callbacks and deliveries answered at once)
and asserts what a driver relies on: which effects come out, in what order,
which of them wait for an answer, and what the phase and the timer say.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any

import pytest

from trio_gm import MemberId
from trio_gm._exceptions import StoreUnavailable
from trio_gm.ring.core import (
    BROADCAST_TIMER,
    JOIN_RETRY_DELAY,
    MEMBERSHIP_CHECK_INTERVAL,
    AwaitReady,
    Callback,
    CallbackDone,
    CallLeft,
    CallResult,
    CheckMembership,
    CheckStop,
    ConfirmedBroadcast,
    Deliver,
    Delivered,
    Effect,
    Idle,
    JoinRequest,
    MembershipChecked,
    Monitor,
    NeighbourDown,
    OwnBroadcasts,
    Phase,
    ProtocolError,
    Read,
    Reply,
    RingCore,
    Send,
    ShuttingDown,
    Start,
    Stop,
    StopMember,
    StoreResult,
    TakeBroadcasts,
    Tick,
    Transact,
    Wait,
    down_priority,
    priority,
)
from trio_gm.ring.messages import (
    Activity,
    ActivityEntry,
    AddOnRight,
    Catchup,
    CheckNeighbours,
    MemberSnapshot,
    NotReady,
)
from trio_gm.store import Group, GroupMember
from trio_gm.store.ops import PruneOrCreate, RecordDead, RecordNewMember

GROUP = "g"
A, B, C, X = (MemberId("n", i) for i in range(1, 5))


def ring(*members: MemberId, version: int = 3, dead: Sequence[MemberId] = ()) -> Group:
    """Group "g" of ``members`` in ring order; those in ``dead`` marked dead."""
    return Group(GROUP, version, tuple(GroupMember(m, dead=m in dead) for m in members))


def step(core: RingCore, event: Any, now: float = 0.0) -> list[Effect]:
    core.handle(event, now)
    return core.effects()


def phase(core: RingCore) -> Phase:
    """``core.phase`` (a call, so that mypy does not narrow it across events)."""
    return core.phase


def waiting(core: RingCore) -> Effect | None:
    return core.waiting


def ready(core: RingCore) -> bool:
    return core.ready


def checking(core: RingCore) -> bool:
    return core.checking_membership


def delivered_pubs(effect: Effect) -> list[tuple[MemberId, Any]]:
    assert type(effect) is Deliver
    return [
        (entry.publisher, pub[0] if effect.unwrap and type(pub) is tuple else pub)
        for entry in effect.entries
        for pub in entry.pubs
    ]


class Pick(random.Random):
    """An rng whose ``choice`` is always ``target`` (the joiner's chosen left)."""

    def __init__(self, target: MemberId) -> None:
        super().__init__(0)
        self.target = target

    def choice(self, seq: Any) -> Any:
        assert self.target in seq
        return self.target


class Ring:
    """A minimal driver for several cores sharing one in-memory store.

    Sends are queued (FIFO over all links) until :meth:`deliver`; store
    effects are answered at once with the op's ``apply``; ``Deliver`` and
    ``Callback`` are answered at once (``Delivered`` with every message, or
    with the ``Stop`` in :attr:`stop_on`); a ``CallLeft`` is fed to the left
    as a ``JoinRequest`` and its ``Reply`` fed back as the ``CallResult``.
    Every effect is logged per member.
    """

    def __init__(self) -> None:
        self.group: Group | None = None
        self.cores: dict[MemberId, RingCore] = {}
        self.net: deque[tuple[MemberId, Any]] = deque()
        self.log: dict[MemberId, list[Effect]] = {}
        self.delivered: dict[MemberId, list[tuple[MemberId, Any]]] = {}
        self.replies: list[Reply] = []
        #: ``(member, msg)``: the Stop that member's handle_msg returns for msg.
        self.stop_on: dict[tuple[MemberId, Any], Stop] = {}
        self.now = 0.0

    def add(self, me: MemberId, left: MemberId | None = None) -> RingCore:
        """Start member ``me`` (joining right of ``left``) and run its join."""
        core = RingCore(me, GROUP, strict=True, rng=None if left is None else Pick(left))
        self.cores[me] = core
        self.log[me] = []
        self.delivered[me] = []
        self.feed(me, Start())
        return core

    def feed(self, me: MemberId, event: Any) -> None:
        core = self.cores[me]
        core.handle(event, self.now)
        for effect in core.effects():
            self.log[me].append(effect)
            self.perform(me, effect)

    def perform(self, me: MemberId, effect: Effect) -> None:
        if isinstance(effect, Send):
            self.net.append((effect.to, effect.msg))
        elif isinstance(effect, Read):
            self.feed(me, StoreResult(effect, self.group))
        elif isinstance(effect, Transact):
            result = effect.op.apply(self.group, GROUP)
            if isinstance(result, Group):
                self.group = result
            self.feed(me, StoreResult(effect.op, result))
        elif isinstance(effect, Deliver):
            count = 0
            for publisher, msg in delivered_pubs(effect):
                self.delivered[me].append((publisher, msg))
                count += 1
                stop = self.stop_on.get((me, msg))
                if stop is not None:
                    self.feed(me, Delivered(count, stop))
                    return
            self.feed(me, Delivered(count))
        elif isinstance(effect, Callback):
            self.feed(me, CallbackDone())
        elif isinstance(effect, CallLeft):
            self.feed(effect.to, JoinRequest(effect.request.new_member, ("join", me)))
        elif isinstance(effect, Reply):
            if isinstance(effect.to, tuple) and effect.to[0] == "join":
                self.feed(effect.to[1], CallResult(effect.value))
            else:
                self.replies.append(effect)

    def deliver(self, limit: int = 1000) -> None:
        """Hand queued ring messages over until none are left (to live members)."""
        for _ in range(limit):
            if not self.net:
                return
            to, msg = self.net.popleft()
            if self.cores[to].phase is not Phase.STOPPED:
                self.feed(to, msg)
        raise AssertionError("the ring never went quiet")

    def broadcast(self, me: MemberId, *msgs: Any) -> None:
        core = self.cores[me]
        asks = [core.offer(msg, msg, 0) for msg in msgs]
        if asks[0]:  # the first offer asks for a TakeBroadcasts
            self.feed(me, TakeBroadcasts())

    def effects_of(self, me: MemberId, cls: type) -> list[Any]:
        return [e for e in self.log[me] if type(e) is cls]


def live_pair() -> Ring:
    """A ring of A and B, both live, nothing in flight."""
    r = Ring()
    r.add(A)
    r.add(B, left=A)
    r.deliver()
    assert r.cores[A].phase is Phase.LIVE
    assert r.cores[B].phase is Phase.LIVE
    r.log = {m: [] for m in r.cores}
    return r


# -- joining ---------------------------------------------------------------------


def test_first_member_creates_the_group_and_goes_live_alone() -> None:
    core = RingCore(A, GROUP, strict=True)
    assert phase(core) is Phase.JOINING

    assert step(core, Start()) == [Read()]
    assert waiting(core) == Read()

    # No row yet: create it (never below a version seen: none seen, 0).
    assert step(core, StoreResult(Read(), None)) == [Transact(PruneOrCreate(A, 0))]
    group = PruneOrCreate(A, 0).apply(None, GROUP)
    assert isinstance(group, Group)

    # Alone: no neighbour to monitor, no catch-up to wait for; then joined.
    effects = step(core, StoreResult(PruneOrCreate(A, 0), group))
    assert effects == [Callback("joined", ([A],))]
    assert core.ready
    assert waiting(core) == Callback("joined", ([A],))

    assert step(core, CallbackDone(), now=7.0) == []
    assert phase(core) is Phase.LIVE
    assert waiting(core) is None
    assert core.view.alive == [A]
    assert core.membership_check_due == 7.0 + MEMBERSHIP_CHECK_INTERVAL
    assert core.next_deadline() == math.inf  # nothing to time


def test_first_member_never_recreates_a_group_below_a_version_seen() -> None:
    """An all-dead stored group is pruned and recreated above its version (bugs 25670, 26173)."""
    core = RingCore(A, GROUP, strict=True)
    step(core, Start())
    old = ring(B, C, version=9, dead=[B, C])
    assert step(core, StoreResult(Read(), old)) == [Transact(PruneOrCreate(A, 9))]
    group = PruneOrCreate(A, 9).apply(old, GROUP)
    assert isinstance(group, Group)
    assert group.version == 10
    assert step(core, StoreResult(PruneOrCreate(A, 9), group)) == [Callback("joined", ([A],))]


def test_a_stop_from_joined_waits_for_the_drivers_check_stop() -> None:
    core = RingCore(A, GROUP, strict=True)
    step(core, Start())
    step(core, StoreResult(Read(), None))
    step(core, StoreResult(PruneOrCreate(A, 0), PruneOrCreate(A, 0).apply(None, GROUP)))
    assert step(core, CallbackDone(Stop("bye"))) == []
    assert phase(core) is Phase.SHUTTING_DOWN
    assert core.shutting_down == "bye"
    # Nothing in flight: the CheckStop the driver posts once it runs stops it.
    assert step(core, CheckStop()) == [StopMember("bye")]
    assert phase(core) is Phase.STOPPED
    assert core.stop_reason == "bye"


def test_second_member_joins_through_its_left_and_waits_for_its_catchup() -> None:
    r = Ring()
    a = r.add(A)
    r.log[A] = []
    b = RingCore(B, GROUP, strict=True)
    r.cores[B], r.log[B], r.delivered[B] = b, [], []

    assert step(b, Start()) == [Read()]
    assert step(b, StoreResult(Read(), r.group)) == [CallLeft(A, AddOnRight(B))]
    assert phase(b) is Phase.JOINING

    # A records B on its right, then (after the commit) sends B its state.
    r.feed(A, JoinRequest(B, "b's call"))
    a_effects = r.log[A]
    assert a_effects[0] == Transact(RecordNewMember(A, B))
    sends = [e for e in a_effects if type(e) is Send]
    assert sends[0].to == B
    assert type(sends[0].msg) is Catchup
    callbacks = [e for e in a_effects if type(e) is Callback]
    assert callbacks == [Callback("members_changed", ([B], []))]
    assert Monitor(B, 1) in a_effects
    stored = r.group
    assert stored is not None
    assert stored.alive == (A, B)
    # The reply comes last, once A has moved to the new view.
    assert r.replies == [Reply("b's call", stored)]
    assert a.right[0] == B
    assert a.left[0] == B

    effects = step(b, CallResult(stored))
    assert effects[-1] == Callback("joined", ([A, B],))
    assert Monitor(A, 1) in effects
    assert Send(A, CheckNeighbours(stored.version)) in effects
    assert step(b, CallbackDone()) == []
    assert phase(b) is Phase.AWAITING_STATE
    assert not ready(b)

    # Answered only once B holds its first state.
    assert step(b, AwaitReady("ready?")) == []

    catchup = sends[0].msg
    effects = step(b, catchup)
    assert phase(b) is Phase.LIVE
    assert ready(b)
    assert Reply("ready?", True) in effects
    # The catch-up goes on right (to A), as B's own.
    assert Send(A, Catchup(stored.version, B, catchup.state)) in effects


def test_a_member_still_waiting_for_its_state_answers_a_join_not_ready() -> None:
    r = Ring()
    r.add(A)
    r.add(B, left=A)  # the catch-up from A is queued, not yet delivered
    b = r.cores[B]
    assert phase(b) is Phase.AWAITING_STATE
    assert step(b, JoinRequest(C, "c's call")) == [Reply("c's call", NotReady())]


def test_not_ready_makes_the_joiner_wait_then_read_again() -> None:
    group = ring(A)
    core = RingCore(B, GROUP, strict=True)
    step(core, Start())
    assert step(core, StoreResult(Read(), group), now=1.0) == [CallLeft(A, AddOnRight(B))]

    due = 2.0 + JOIN_RETRY_DELAY
    assert step(core, CallResult(NotReady()), now=2.0) == [Wait(due)]
    assert waiting(core) == Wait(due)
    assert core.next_deadline() == due

    assert step(core, Tick(), now=due) == [Read()]
    assert core.next_deadline() == math.inf
    # It asks again, with the fresh read.
    assert step(core, StoreResult(Read(), group), now=due) == [CallLeft(A, AddOnRight(B))]


def test_a_dead_left_is_recorded_dead_and_another_left_asked() -> None:
    from trio_gm._exceptions import ActorError
    from trio_gm.ring.core import CallFailed

    core = RingCore(C, GROUP, strict=True, rng=Pick(A))
    step(core, Start())
    group = ring(A, B, version=4)
    assert step(core, StoreResult(Read(), group)) == [CallLeft(A, AddOnRight(C))]
    assert step(core, CallFailed(ActorError("gone"))) == [Transact(RecordDead(C, A, verify=False))]
    after = RecordDead(C, A, verify=False).apply(group, GROUP)
    assert isinstance(after, Group)
    assert after.alive == (B,)
    core._rng = Pick(B)
    assert step(core, StoreResult(RecordDead(C, A, verify=False), after)) == [
        CallLeft(B, AddOnRight(C))
    ]


def test_an_orphaned_joiner_records_itself_dead_and_asks_to_join_again() -> None:
    """Its left recorded it and died before handing over its state (the
    explorer's ``orphan-join``): nobody else can give it that state."""
    from trio_gm._exceptions import ActorError
    from trio_gm.ring.core import CallFailed, Rejoin

    core = RingCore(C, GROUP, strict=True, rng=Pick(A))
    step(core, Start())
    before = ring(A, B, version=4)
    assert step(core, StoreResult(Read(), before)) == [CallLeft(A, AddOnRight(C))]
    recorded = RecordNewMember(A, C).apply(before, GROUP)  # A committed, then died
    assert isinstance(recorded, Group)
    assert step(core, CallFailed(ActorError("gone"))) == [Transact(RecordDead(C, A, verify=False))]
    after = RecordDead(C, A, verify=False).apply(recorded, GROUP)
    assert isinstance(after, Group)
    assert after.is_alive(C)
    assert step(core, StoreResult(RecordDead(C, A, verify=False), after)) == [
        Transact(RecordDead(C, C, verify=False))
    ]
    effects = step(core, StoreResult(RecordDead(C, C, verify=False), after))
    assert len(effects) == 1
    assert type(effects[0]) is Rejoin
    assert phase(core) is Phase.STOPPED
    assert not ready(core)


# -- the first catch-up: history, not news ----------------------------------------------


def _awaiting_between_a_and_c() -> tuple[RingCore, Group]:
    """B recorded right of A in the ring A, C; B waits for A's catch-up."""
    core = RingCore(B, GROUP, strict=True, rng=Pick(A))
    before = ring(A, C, version=5)
    after = RecordNewMember(A, B).apply(before, GROUP)
    assert isinstance(after, Group)
    step(core, Start())
    step(core, StoreResult(Read(), before))
    step(core, CallResult(after))
    step(core, CallbackDone())
    assert phase(core) is Phase.AWAITING_STATE
    assert (core.left[0], core.right[0]) == (A, C)
    return core, after


def _state(a_pending: tuple[Any, ...], a_last: int) -> tuple[tuple[MemberId, MemberSnapshot], ...]:
    """A catch-up state in which A has published through ``a_last``."""
    empty = MemberSnapshot(0, (), -1, -1)
    first = a_last - len(a_pending) + 1
    return ((A, MemberSnapshot(first, a_pending, a_last, -1)), (B, empty), (C, empty))


def test_the_first_catchup_is_history_nothing_in_it_is_delivered() -> None:
    core, group = _awaiting_between_a_and_c()
    effects = step(core, Catchup(group.version, A, _state(("m0",), 0)))
    assert phase(core) is Phase.LIVE
    assert not [e for e in effects if type(e) is Deliver]

    # X joins between A and B: its catch-up (A's state, m0 still pending)
    # brings B nothing it has not had. Had B taken its first catch-up as a
    # blank state, m0 would be news here.
    with_x = RecordNewMember(A, X).apply(group, GROUP)
    assert isinstance(with_x, Group)
    v = with_x.version
    assert step(core, Catchup(v, X, _state(("m0",), 0))) == [Read()]
    effects = step(core, StoreResult(Read(), with_x))
    assert effects == [Callback("members_changed", ([X], []))]
    effects = step(core, CallbackDone())
    assert core.left[0] == X
    assert not [e for e in effects if type(e) is Deliver]
    assert waiting(core) is None

    # What A publishes next is news: passed right, then delivered.
    effects = step(core, Activity(v, X, (ActivityEntry(A, 1, ("m1",)),)))
    first = effects[0]
    assert isinstance(first, Send)
    assert first.to == C
    assert type(effects[-1]) is Deliver
    assert delivered_pubs(effects[-1]) == [(A, "m1")]
    assert step(core, Delivered(1)) == []


def test_messages_before_the_first_catchup_are_held_then_replayed_in_order() -> None:
    core, group = _awaiting_between_a_and_c()
    v = group.version
    held = [
        # Only the catch-up of the member that recorded the join counts.
        Catchup(v, C, _state(("m0", "m1", "m2"), 2)),
        Activity(v, A, (ActivityEntry(A, 1, ("m1",)),)),
        CheckNeighbours(v),
        Activity(v, C, (ActivityEntry(C, 0, ("stray",)),)),  # not from the left
        Activity(v, A, (ActivityEntry(A, 2, ("m2",)),)),
    ]
    for msg in held:
        assert step(core, msg) == []
    assert phase(core) is Phase.AWAITING_STATE

    effects = step(core, Catchup(v, A, _state(("m0",), 0)))
    assert phase(core) is Phase.LIVE
    assert effects[0] == Send(C, Catchup(v, B, _state(("m0",), 0)))
    # The first held activity is replayed once the state is there ...
    assert type(effects[-1]) is Deliver
    assert delivered_pubs(effects[-1]) == [(A, "m1")]
    assert waiting(core) == effects[-1]
    # ... and, once it is delivered, the rest, in order (the strays dropped).
    effects = step(core, Delivered(1))
    assert [delivered_pubs(e) for e in effects if type(e) is Deliver] == [[(A, "m2")]]
    assert step(core, Delivered(1)) == []
    assert waiting(core) is None
    assert core.held == []


@pytest.mark.xfail(
    strict=True,
    reason="calculate_activity passes an entry on (and the core delivers it) unchanged: "
    "join_pubs skips publications already seen in the state only, so a duplicate "
    "activity is delivered and forwarded again, contrary to join_pubs' docstring",
)
def test_a_duplicated_activity_is_not_delivered_twice() -> None:
    core, group = _awaiting_between_a_and_c()
    v = group.version
    step(core, Catchup(v, A, _state((), -1)))
    once = Activity(v, A, (ActivityEntry(A, 0, ("m0",)),))
    effects = step(core, once)
    assert delivered_pubs(effects[-1]) == [(A, "m0")]
    step(core, Delivered(1))
    effects = step(core, once)
    assert not [e for e in effects if type(e) is Deliver]


# -- broadcasting ---------------------------------------------------------------------


def test_own_broadcasts_are_delivered_here_then_buffered_then_flushed_when_idle() -> None:
    r = live_pair()
    a = r.cores[A]
    assert a.offer("m0", "m0", 0) is True  # the first asks for a TakeBroadcasts
    assert a.offer("m1", "m1", 0) is False  # the next ride along
    assert a.in_flight == 2

    effects = step(a, TakeBroadcasts(), now=3.0)
    assert effects == [Deliver((OwnBroadcasts(A, [("m0", "m0", 0), ("m1", "m1", 0)]),), True)]
    assert waiting(a) == effects[0]
    assert step(a, Delivered(2), now=3.0) == []  # buffered: nothing sent yet
    assert a.buffer == ["m0", "m1"]
    assert a.in_flight == 2

    effects = step(a, Idle(), now=3.001)
    version = a.view.version
    assert effects == [Send(B, Activity(version, A, (ActivityEntry(A, 0, ("m0", "m1")),)))]
    assert a.buffer == []
    assert a.in_flight == 2  # sent, not yet acknowledged


def test_alone_a_broadcast_is_only_delivered() -> None:
    r = Ring()
    a = r.add(A)
    a.offer("solo", "solo", 0)
    assert step(a, TakeBroadcasts()) == [Deliver((OwnBroadcasts(A, [("solo", "solo", 0)]),), True)]
    assert step(a, Delivered(1)) == []
    assert a.buffer == []
    assert a.in_flight == 0
    assert a.next_deadline() == math.inf


def test_the_flush_timer_is_armed_by_the_handle_that_filled_the_buffer() -> None:
    r = live_pair()
    a = r.cores[A]
    assert a.next_deadline() == math.inf
    a.offer("m0", "m0", 0)
    step(a, TakeBroadcasts(), now=5.0)
    assert a.next_deadline() == math.inf  # still delivering: nothing buffered yet
    step(a, Delivered(1), now=5.5)
    due = 5.5 + BROADCAST_TIMER
    assert a.flush_due == due
    assert a.next_deadline() == due

    # Early: nothing happens, and the timer stays armed.
    assert step(a, Tick(), now=due - 0.001) == []
    assert a.buffer == ["m0"]
    assert a.next_deadline() == due

    # At the deadline: flushed, and disarmed.
    effects = step(a, Tick(), now=due)
    assert [type(e) for e in effects] == [Send]
    assert a.buffer == []
    assert a.next_deadline() == math.inf


def test_the_flush_timer_flushes_after_its_deadline_however_busy() -> None:
    """Under load the mailbox never idles: a late Tick still flushes."""
    r = live_pair()
    a = r.cores[A]
    a.offer("m0", "m0", 0)
    step(a, TakeBroadcasts(), now=1.0)
    step(a, Delivered(1), now=1.0)
    # More broadcasts keep coming: the deadline does not move.
    a.offer("m1", "m1", 0)
    step(a, TakeBroadcasts(), now=1.01)
    step(a, Delivered(1), now=1.01)
    assert a.next_deadline() == 1.0 + BROADCAST_TIMER
    effects = step(a, Tick(), now=1.2)
    assert effects == [Send(B, Activity(a.view.version, A, (ActivityEntry(A, 0, ("m0", "m1")),)))]


def test_own_messages_go_round_and_are_acknowledged() -> None:
    r = live_pair()
    r.broadcast(A, "m0", "m1")
    r.feed(A, Idle())
    r.deliver()
    assert r.delivered[B] == [(A, "m0"), (A, "m1")]
    assert r.delivered[A] == [(A, "m0"), (A, "m1")]  # at broadcast, once
    assert r.cores[A].in_flight == 0
    assert not r.cores[A].has_pending()
    assert not r.cores[B].has_pending()


def test_offer_within_takes_a_broadcast_only_under_the_limit_of_messages_in_flight() -> None:
    r = live_pair()
    a = r.cores[A]
    assert a.offer_within(2, "m0", "m0", 0) == 1  # taken; the first asks for a TakeBroadcasts
    assert a.offer_within(2, "m1", "m1", 0) == 0  # taken, riding along
    assert a.offer_within(2, "m2", "m2", 0) == -1  # two in flight: not taken
    assert a.in_flight == 2
    r.feed(A, TakeBroadcasts())
    r.feed(A, Idle())
    assert a.offer_within(2, "m2", "m2", 0) == -1  # sent, not yet acknowledged
    r.deliver()
    assert a.in_flight == 0
    assert a.offer_within(2, "m2", "m2", 0) == 1
    r.feed(A, TakeBroadcasts())
    r.feed(A, Idle())
    r.deliver()
    assert r.delivered[B] == [(A, "m0"), (A, "m1"), (A, "m2")]


def test_a_confirmed_broadcast_is_answered_once_acknowledged() -> None:
    r = live_pair()
    r.feed(A, ConfirmedBroadcast("c", "c", "confirm call"))
    assert r.replies == []
    assert r.effects_of(A, Send)  # flushed at once, no Idle needed
    r.deliver()
    assert r.replies == [Reply("confirm call", True)]
    assert r.delivered[B] == [(A, "c")]


# -- stopping -------------------------------------------------------------------------


def test_a_stop_while_own_messages_are_in_flight_is_deferred_until_acknowledged() -> None:
    r = live_pair()
    a = r.cores[A]
    r.stop_on[(A, "last")] = Stop("bye")
    r.broadcast(A, "last", "dropped")
    # "last" is published; the rest of the batch is dropped; A waits for it.
    assert phase(a) is Phase.SHUTTING_DOWN
    assert a.shutting_down == "bye"
    assert r.effects_of(A, StopMember) == []
    assert a.buffer == ["last"]

    # Broadcasts and confirms taken now are refused.
    r.feed(A, ConfirmedBroadcast("late", "late", "late call"))
    assert r.replies == [Reply("late call", ShuttingDown("bye"))]

    r.feed(A, Idle())
    r.deliver()
    assert r.delivered[B] == [(A, "last")]
    assert a.in_flight == 0
    # It stopped once its message went round, not before.
    assert r.effects_of(A, StopMember) == [StopMember("bye")]
    assert phase(a) is Phase.STOPPED
    assert a.stop_reason == "bye"


def test_a_stop_with_nothing_in_flight_stops_at_once() -> None:
    r = live_pair()
    r.stop_on[(B, "halt")] = Stop("done")
    r.broadcast(A, "halt")
    r.feed(A, Idle())
    r.deliver()
    # B delivered A's message and returned Stop: B stops once A's
    # publication, which it holds, is acknowledged past it.
    assert r.effects_of(B, StopMember) == [StopMember("done")]
    assert r.cores[B].phase is Phase.STOPPED


def test_membership_checked_with_self_recorded_dead_stops_with_shutdown() -> None:
    r = live_pair()
    a = r.cores[A]
    r.feed(A, ConfirmedBroadcast("c", "c", "confirm call"))  # in flight: must be answered
    assert r.group is not None
    recorded_dead = ring(A, B, version=r.group.version + 1, dead=[A])
    effects = step(a, MembershipChecked(recorded_dead))
    assert effects == [Reply("confirm call", ShuttingDown("shutdown")), StopMember("shutdown")]
    assert phase(a) is Phase.STOPPED
    assert a.stop_reason == "shutdown"


def test_membership_checked_without_a_group_or_a_store_stops() -> None:
    r = live_pair()
    assert step(r.cores[A], MembershipChecked(None)) == [StopMember("shutdown")]
    error = StoreUnavailable("the store stayed away")
    assert step(r.cores[B], MembershipChecked(error)) == [StopMember(error)]


def test_membership_check_runs_beside_an_activity_once_due() -> None:
    r = live_pair()
    a, b = r.cores[A], r.cores[B]
    assert b.membership_check_due < math.inf
    r.now = b.membership_check_due
    r.broadcast(A, "m")
    r.feed(A, Idle())
    r.deliver()
    checks = r.effects_of(B, CheckMembership)
    assert checks == [CheckMembership()]
    # Delivery did not wait for it.
    assert r.delivered[B] == [(A, "m")]
    assert checking(b)
    # Still alive: nothing happens, and the next check is due an interval on.
    assert step(b, MembershipChecked(r.group), now=10.0) == []
    assert not checking(b)
    assert b.membership_check_due == 10.0 + MEMBERSHIP_CHECK_INTERVAL
    assert phase(a) is Phase.LIVE
    assert phase(b) is Phase.LIVE


def test_a_neighbours_down_is_recorded_and_leaves_the_member_alone() -> None:
    r = live_pair()
    a = r.cores[A]
    r.feed(A, ConfirmedBroadcast("c", "c", "confirm call"))
    tag = a.right[1]
    assert tag is not None
    r.feed(A, NeighbourDown(tag, B))
    assert r.effects_of(A, Transact)[0] == Transact(RecordDead(A, B, verify=True))
    # Alone: the confirm is answered (nobody else can hold it), B reported dead.
    assert Reply("confirm call", True) in r.replies
    assert Callback("members_changed", ([], [B])) in r.log[A]
    assert a.view.alive == [A]
    assert phase(a) is Phase.LIVE


# -- strictness -----------------------------------------------------------------------


def test_strict_an_event_while_an_answer_is_outstanding_raises() -> None:
    core = RingCore(A, GROUP, strict=True)
    step(core, Start())
    assert waiting(core) == Read()
    with pytest.raises(ProtocolError, match="waits for the answer to Read"):
        core.handle(Idle(), 0.0)
    # The wrong kind of answer is refused too.
    with pytest.raises(ProtocolError):
        core.handle(CallbackDone(), 0.0)
    assert waiting(core) == Read()  # still waiting, still answerable
    assert step(core, StoreResult(Read(), None)) == [Transact(PruneOrCreate(A, 0))]


def test_strict_an_answer_nobody_asked_for_raises() -> None:
    r = Ring()
    core = r.add(A)
    assert waiting(core) is None
    for answer in (StoreResult(Read(), None), CallbackDone(), Delivered(1), CallResult(None)):
        with pytest.raises(ProtocolError, match="unexpected"):
            core.handle(answer, 0.0)
    assert phase(core) is Phase.LIVE


def test_strict_an_unknown_event_raises() -> None:
    core = Ring().add(A)
    with pytest.raises(ProtocolError, match="not an event of the ring"):
        core.handle("flush", 0.0)


def test_an_unknown_event_is_logged_and_dropped_outside_strict_mode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = RingCore(A, GROUP)  # production mode
    step(core, Start())
    step(core, StoreResult(Read(), None))
    step(core, StoreResult(PruneOrCreate(A, 0), PruneOrCreate(A, 0).apply(None, GROUP)))
    step(core, CallbackDone())
    with caplog.at_level(logging.DEBUG, logger="trio_gm.member"):
        assert step(core, "flush") == []
        assert step(core, CallbackDone()) == []  # an answer nobody asked for
    assert phase(core) is Phase.LIVE
    assert "not an event of the ring" in caplog.text
    # ... and the core carries on.
    core.offer("m", "m", 0)
    assert step(core, TakeBroadcasts()) == [Deliver((OwnBroadcasts(A, [("m", "m", 0)]),), True)]


def test_strict_events_before_the_start_or_after_the_stop_raise() -> None:
    core = RingCore(A, GROUP, strict=True)
    with pytest.raises(ProtocolError, match="still joining"):
        core.handle(Idle(), 0.0)
    r = live_pair()
    a = r.cores[A]
    step(a, MembershipChecked(None))
    assert phase(a) is Phase.STOPPED
    with pytest.raises(ProtocolError, match="has stopped"):
        a.handle(Activity(a.view.version, B, ()), 0.0)


# -- mailbox priorities ---------------------------------------------------------------


def test_the_timer_and_a_membership_check_overtake_everything() -> None:
    core = Ring().add(A)
    assert priority(core, Tick()) == 1
    assert priority(core, MembershipChecked(None)) == 2
    assert priority(core, Activity(0, B, ())) == 0
    assert priority(core, Catchup(0, B, ())) == 0
    assert priority(core, TakeBroadcasts()) == 0
    assert priority(core, Idle()) == 0


def test_down_priorities() -> None:
    r = Ring()
    r.add(A)
    r.add(B, left=A)
    r.deliver()
    r.add(C, left=B)  # ring A -> B -> C -> A; C's catch-up still queued
    c = r.cores[C]
    assert (c.left[0], c.right[0]) == (B, A)
    # Before its first catch-up no DOWN overtakes it.
    assert down_priority(c, B) == 0
    assert priority(c, NeighbourDown(2, A)) == 0
    r.deliver()
    assert c.ready
    # The right's DOWN overtakes (do not keep sending into a dead right) ...
    assert priority(c, NeighbourDown(c.right[1] or 0, A)) == 1
    # ... the left's does not (its last activity must be handled first).
    assert priority(c, NeighbourDown(c.left[1] or 0, B)) == 0
    # In a ring of two the left is also the right: by target, the left's rule.
    a2 = live_pair().cores[A]
    assert a2.left[0] == a2.right[0] == B
    assert down_priority(a2, B) == 0
