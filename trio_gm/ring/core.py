"""The ring protocol of one member, as a state machine with no I/O.

:class:`RingCore` is gm.erl's member with every ``receive`` and every call
out turned inside out, as h11 does for HTTP: the driver (the actor in
:mod:`trio_gm.ring.member`, or the schedule explorer) feeds it *events*
with :meth:`RingCore.handle`, drains the *effects* it decided on with
:meth:`RingCore.effects`, and arms one timer for
:meth:`RingCore.next_deadline`. The core has no trio, no clock (``now`` is
an argument) and no I/O; it never blocks and never calls user code.

Phases (:class:`Phase`)
=======================
``JOINING``
    From :class:`Start` until it is in the stored ring: the member reads
    the stored ring, creates it or asks a random alive member to record it
    on its right (``AddOnRight``), and retries on ``NotReady`` after
    :data:`JOIN_RETRY_DELAY`. Then it calls ``joined`` (already in the next
    phase); only :class:`Start`'s procedure runs until that has answered.
``AWAITING_STATE``
    In the stored ring, waiting for the first catch-up, which only the
    member that recorded the join may send (Lemma 2). Every other ring
    message is held and handled after it, in order, from
    :attr:`RingCore.replaying` (RabbitMQ bug 26171, PR 10356). Alone in the
    ring, a member skips this phase.
``LIVE``
    Holding a members state: relaying, delivering, publishing.
``SHUTTING_DOWN``
    A callback returned ``Stop`` while this member's own messages were in
    flight: it stops once they have gone round (RabbitMQ issue 224);
    meanwhile it takes no new broadcasts.
``STOPPED``
    A :class:`StopMember` (or :class:`Rejoin`) was emitted. Only
    :class:`Leave` is still taken, to flush a normal leave.

Waiting for an answer
=====================
Some effects need an answer before the member may go on, exactly where
gm's member waits: :class:`Read` and :class:`Transact` (the store),
:class:`CallLeft` (the join), :class:`Deliver` and :class:`Callback` (user
code, whose ``Stop`` changes what happens next) and :class:`Wait` (the join
retry). Such an effect is always the last one drained, and the driver
answers it with :class:`StoreResult` / :class:`StoreFailed`,
:class:`CallResult` / :class:`CallFailed`, :class:`Delivered`,
:class:`CallbackDone` or :class:`Tick`. While one is outstanding
(:attr:`RingCore.waiting`), nothing else may be handled: the actor does
not read its mailbox meanwhile, as gm's member does not. The procedures
that wait are generators; each ``yield`` is such an effect, and ``handle``
sends the answer in.

The rules
=========
Joining (Lemma 2)
    Never recreate a group below a version seen (bug 25670); a group whose
    members are all dead is pruned and recreated (bug 26173). A chosen left
    that is dead is recorded dead; if it had recorded us first and died
    before handing over its state, we record ourselves dead and
    :class:`Rejoin` under a new id (the explorer's ``orphan-join``).
Views (Lemma 3)
    A ring message with a newer view version makes the member re-read the
    stored ring first; a member no longer alive in it stops with
    ``shutdown`` (issues 714, 950, 953). Every view change reports births
    and deaths, then re-checks both neighbours (bug 26084): a new right
    gets a catch-up of the whole state, an old neighbour a
    ``CheckNeighbours``.
Activities
    Only the left's messages count; anything else is a stray. A new left's
    activities count only once its catch-up has come (it sends one when it
    finds us its right): what it sent before is from an earlier time it was
    our left. Publications
    are passed right before they are delivered (the ring stays pipelined),
    and delivered before aliases are erased (an erasure may report a
    publisher of the batch dead). A catch-up's resulting activity is split
    to fit a frame. Acknowledgements of our own publications answer
    confirmed broadcasts.
Publishing
    Own broadcasts are delivered here first, then buffered; the buffer goes
    right as one activity when the mailbox goes idle (:class:`Idle`), when
    the flush timer (:data:`BROADCAST_TIMER`, armed when the buffer fills
    and not cancelled when it empties) fires, when it passes
    :data:`MAX_BUFFER_SIZE` of size hints, or when its encoded bytes would
    pass ``max_batch_bytes`` (a "cut" send: the driver yields after it).
    Alone, delivery is all there is.
Deaths
    Only a neighbour's DOWN counts. It is recorded with ``verify`` (lost
    membership is found there). Left alone, the member blanks its state and
    answers confirms before erasing aliases (bug 26119); becoming alone
    through someone else's view change does the same (``alone-keeps-state``).
Membership check (issue 714)
    An activity at or after :attr:`RingCore.membership_check_due` starts a
    :class:`CheckMembership` read beside the ring (delivery needs no
    store); its :class:`MembershipChecked` outcome, which overtakes
    everything in the mailbox (:func:`priority`), stops the member with
    ``shutdown`` if it is recorded dead, or with the store's error.
Stopping
    A callback's ``Stop`` stops the member at once if nothing of its own is
    in flight, else defers the stop (``SHUTTING_DOWN``); broadcasts taken
    after that are dropped with a warning, confirmed ones answered with
    :class:`ShuttingDown`. A stop answers every waiting confirm with
    :class:`ShuttingDown`.

Strictness
==========
An event while an answer is outstanding, or an answer of the wrong kind,
always raises :class:`ProtocolError`: it is the driver's bug, and the core
would be stuck without its answer. Other input that should never arrive
(an unknown event, one before :class:`Start` or after the stop) raises it
with ``strict=True`` (tests, the explorer); in production it is logged and
dropped, as an unexpected message always was.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections import deque
from collections.abc import Generator, Sequence
from typing import Any, Final

import attrs

from .._exceptions import ActorError, StoreUnavailable
from .._ids import MemberId
from .._packed import PLAIN_BOUND
from ..store import Group, LostMembership
from ..store.ops import EraseMembers, PruneOrCreate, RecordDead, RecordNewMember, StoreOp
from .members_state import (
    MembersState,
    build_members_state,
    calculate_activity,
    catchup_entries,
    erasable_aliases,
    has_pending,
    prepare_snapshot,
    remove_erased_members,
    split_entries,
    state_for,
)
from .messages import (
    Activity,
    ActivityEntry,
    AddOnRight,
    Catchup,
    CheckNeighbours,
    NotReady,
)
from .view import View, births_and_deaths, group_to_view

log = logging.getLogger("trio_gm.member")

#: Seconds a broadcast may wait in the buffer under constant load (gm's 25 ms).
BROADCAST_TIMER: Final = 0.025
#: Flush at once when the size hints of buffered messages pass this (gm's 100 MB).
MAX_BUFFER_SIZE: Final = 100_000_000
#: How often, at most, an activity triggers a check that this member is still
#: in the stored ring (RabbitMQ issue 714; gm checked on every activity, a
#: store read each time). A DOWN and a view refresh always check.
MEMBERSHIP_CHECK_INTERVAL = 0.25
#: Pause before asking again when the chosen left answers ``NotReady``.
JOIN_RETRY_DELAY: Final = 0.005


class Phase(enum.Enum):
    """Where a member is in its life (see the module docstring)."""

    JOINING = "joining"
    AWAITING_STATE = "awaiting its first catch-up"
    LIVE = "live"
    SHUTTING_DOWN = "shutting down"
    STOPPED = "stopped"


# The phases as module constants: ``Phase.X`` is a Python-level lookup on
# Python 3.11 (EnumType.__getattr__, about 100 ns), and some are read per hop.
_JOINING: Final = Phase.JOINING
_AWAITING_STATE: Final = Phase.AWAITING_STATE
_LIVE: Final = Phase.LIVE
_SHUTTING_DOWN: Final = Phase.SHUTTING_DOWN
_STOPPED: Final = Phase.STOPPED


class ProtocolError(Exception):
    """Strict mode: input that the protocol says can never arrive."""


# -- callback results (public: trio_gm.Stop, trio_gm.Become) --------------------


@attrs.frozen
class Stop:
    """A callback's result: stop this member with ``reason``."""

    reason: Any


@attrs.frozen
class Become:
    """A callback's result: carry on with ``callbacks`` called with ``args``."""

    callbacks: Any
    args: Any


@attrs.frozen
class ShuttingDown:
    """Reply to a confirmed broadcast that was not sent: the member is stopping."""

    reason: Any


class OrphanedJoin(Exception):
    """A joiner's left recorded it and died before handing over its state.

    The joiner has recorded itself dead; ``open_member`` joins again with a
    new member id. Never escapes ``open_member``.
    """


# -- events: what a driver feeds in ---------------------------------------------------


@attrs.frozen
class Start:
    """Begin the join (the actor's ``init``)."""


@attrs.frozen
class NeighbourDown:
    """A monitor the core asked for (:class:`Monitor` ``tag``) fired."""

    tag: int
    #: The member it watched (for the mailbox priority).
    target: MemberId


@attrs.frozen
class TakeBroadcasts:
    """The owner handed broadcasts over (:meth:`RingCore.offer` asked for this)."""


@attrs.frozen
class ConfirmedBroadcast:
    """The owner's confirmed broadcast; answered with a :class:`Reply` to ``reply_to``."""

    msg: Any
    #: What the ring carries (``msg`` itself, or its packed pair).
    wire: Any
    reply_to: Any


@attrs.frozen
class JoinRequest:
    """A joiner's ``AddOnRight`` call; answered with a :class:`Reply` to ``reply_to``."""

    new_member: MemberId
    reply_to: Any


@attrs.frozen
class AwaitReady:
    """Answer ``reply_to`` with True once this member holds its first state."""

    reply_to: Any


@attrs.frozen
class ValidateMembers:
    """The owner's list of members: report any difference with ``members_changed``."""

    members: tuple[MemberId, ...]


@attrs.frozen
class MembershipChecked:
    """What a :class:`CheckMembership` read found."""

    outcome: Group | StoreUnavailable | None


@attrs.frozen
class Tick:
    """The timer armed for :meth:`RingCore.next_deadline` fired."""


@attrs.frozen
class Idle:
    """The mailbox went empty (gen_server2's timeout 0): flush."""


@attrs.frozen
class CheckStop:
    """Stop now if a deferred stop has nothing left in flight."""


@attrs.frozen
class Leave:
    """The member is being stopped with gm reason ``"normal"``: flush what was accepted."""


@attrs.frozen
class StoreResult:
    """Answer to :class:`Read` (a group or None) or :class:`Transact`."""

    op: Any
    result: Group | LostMembership | None


@attrs.frozen
class StoreFailed:
    """Answer to :class:`Read` or :class:`Transact`: the store stayed away."""

    op: Any
    error: StoreUnavailable


@attrs.frozen
class CallResult:
    """Answer to :class:`CallLeft`: the left's reply."""

    reply: Any


@attrs.frozen
class CallFailed:
    """Answer to :class:`CallLeft`: the left died before answering."""

    error: ActorError


@attrs.define  # (not frozen: made for every hop, and frozen costs twice as much)
class Delivered:
    """Answer to :class:`Deliver`: ``count`` messages handed to ``handle_msg``.

    ``stop`` is the ``Stop`` one of them returned (the last counted), if any.
    """

    count: int
    stop: Stop | None = None


@attrs.frozen
class CallbackDone:
    """Answer to :class:`Callback`: its ``Stop``, or None."""

    stop: Stop | None = None


Event = Any  # the classes above, and Activity, Catchup, CheckNeighbours

# -- effects: what a driver does ----------------------------------------------------


@attrs.define  # (not frozen: made for every hop, and frozen costs twice as much)
class Send:
    """Cast ``msg`` to member ``to``.

    ``cut``: a buffer cut at the byte budget; more may follow at once, so
    the driver lets its connections run after it.
    """

    to: MemberId
    msg: Activity | Catchup | CheckNeighbours
    cut: bool = False


@attrs.frozen
class Monitor:
    """Watch ``target``; its death comes back as :class:`NeighbourDown` ``tag``."""

    target: MemberId
    tag: int


@attrs.frozen
class Demonitor:
    """Stop watching (no :class:`NeighbourDown` for ``tag`` may follow)."""

    tag: int


@attrs.frozen
class Read:
    """Read the stored group; answer :class:`StoreResult` (group or None)."""


@attrs.frozen
class Transact:
    """Run ``op`` in a SERIALIZABLE transaction; answer :class:`StoreResult`."""

    op: StoreOp


@attrs.frozen
class CheckMembership:
    """Read the stored group beside the ring; post :class:`MembershipChecked` back."""


@attrs.frozen
class CallLeft:
    """Call ``to`` with ``request``; answer :class:`CallResult` or :class:`CallFailed`."""

    to: MemberId
    request: AddOnRight


@attrs.frozen
class Wait:
    """Answer :class:`Tick` at ``deadline`` (also :meth:`RingCore.next_deadline`)."""

    deadline: float


@attrs.define
class OwnBroadcasts:
    """This member's broadcasts as handed over, in a :class:`Deliver`: each
    of ``pubs`` is ``(msg, wire, size_hint)`` (``unwrap`` delivers ``msg``)."""

    publisher: MemberId
    pubs: list[tuple[Any, Any, int]]


@attrs.define  # (not frozen: made for every hop, and frozen costs twice as much)
class Deliver:
    """Call ``handle_msg`` for each publication, in order, until one returns ``Stop``.

    With ``unwrap`` a publication that is a tuple is a ``(value, bytes)``
    pair: deliver the value. Answer :class:`Delivered`.
    """

    entries: Sequence[ActivityEntry | OwnBroadcasts]
    unwrap: bool


@attrs.frozen
class Callback:
    """Call the callback ``name`` (``joined``, ``members_changed``).

    Answer :class:`CallbackDone`.
    """

    name: str
    arguments: tuple[Any, ...]


@attrs.define  # (not frozen: made for every hop, and frozen costs twice as much)
class Reply:
    """Answer the call ``to`` with ``value``."""

    to: Any
    value: Any


@attrs.frozen
class StopMember:
    """The member stops with ``reason`` (a value, or the store's error)."""

    reason: Any


@attrs.frozen
class Rejoin:
    """Join failed as an orphan (we recorded ourselves dead): join again with a new id."""

    error: OrphanedJoin


Effect = (
    Send
    | Monitor
    | Demonitor
    | Read
    | Transact
    | CheckMembership
    | CallLeft
    | Wait
    | Deliver
    | Callback
    | Reply
    | StopMember
    | Rejoin
)

_ANSWERS: Final = {
    Read: (StoreResult, StoreFailed),
    Transact: (StoreResult, StoreFailed),
    CallLeft: (CallResult, CallFailed),
    Wait: (Tick,),
    Deliver: (Delivered,),
    Callback: (CallbackDone,),
}

#: Events after which no deferred stop is checked: calls (as gm), the join
#: (the driver posts :class:`CheckStop` once it runs) and the leave.
_CALLS: Final = (ConfirmedBroadcast, JoinRequest, AwaitReady, Start, Leave)

_Proc = Generator[Any, Any, None]


class _StopMember(Exception):
    """Unwinds a procedure: the member stops with ``reason``."""

    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


def _lost(result: Group | LostMembership | None) -> Group:
    """A store result, or stop with ``shutdown`` (RabbitMQ issues 714, 950, 953)."""
    if isinstance(result, LostMembership):
        log.info("member stops: %s", result.reason)
        raise _StopMember("shutdown")
    assert result is not None
    return result


class RingCore:
    """One member's protocol state; see the module docstring for its rules."""

    def __init__(
        self,
        self_id: MemberId,
        group_name: str,
        *,
        max_batch_bytes: int | None = None,
        strict: bool = False,
        rng: random.Random | None = None,
        membership_check_interval: float | None = None,
    ) -> None:
        self.self_id = self_id
        self.group_name = group_name
        #: Encoded bytes of messages one activity may carry. None means no
        #: network side: no bound, and messages travel as they are; else
        #: they travel as ``(value, bytes)`` pairs or plain values
        #: (``trio_gm._packed``).
        self.max_batch_bytes = max_batch_bytes
        self.strict = strict
        #: At most this often an activity starts a membership check.
        self.membership_check_interval = (
            MEMBERSHIP_CHECK_INTERVAL
            if membership_check_interval is None
            else membership_check_interval
        )
        self._rng = rng if rng is not None else random.Random()
        self.phase = _JOINING
        self.view: View = View(version=-1, members={})
        #: ``(member, monitor tag)``; the tag is None for ourselves.
        self.left: tuple[MemberId, int | None] = (self_id, None)
        self.right: tuple[MemberId, int | None] = (self_id, None)
        self.members_state: MembersState | None = None
        self.pub_count = -1
        #: ``(publication number, reply_to)`` of confirmed broadcasts.
        self.confirms: deque[tuple[int, Any]] = deque()
        self.buffer: list[Any] = []
        #: Size hints of the buffered messages.
        self.buffer_size = 0
        #: Encoded bytes of the buffered messages (with ``max_batch_bytes``).
        self.buffer_bytes = 0
        #: The reason of a deferred ``Stop`` (RabbitMQ issue 224).
        self.shutting_down: Any = None
        #: Why this member stopped, once it decided to.
        self.stop_reason: Any = None
        self.ready_waiters: list[Any] = []
        #: The member that recorded our join: our first state comes from it.
        self.join_left: MemberId | None = None
        #: Ring messages that came before our first state, held until it.
        self.held: list[Activity | Catchup | CheckNeighbours] = []
        #: Our left has sent us its catch-up since it became our left: only
        #: then do its activities count (one it sent before is stale: from
        #: an earlier time it was our left, with a gap since).
        self.left_caught_up = False
        #: Those held, being handled in order now that the first state came.
        self.replaying: deque[Activity | Catchup | CheckNeighbours] = deque()
        self.delivered = 0
        #: When an activity next starts a membership check.
        self.membership_check_due = math.inf
        #: A :class:`CheckMembership` is out.
        self.checking_membership = False
        #: Broadcasts the owner handed over, not yet taken: ``(msg, wire,
        #: size_hint)``; ``wire`` is what the ring carries (``msg`` itself,
        #: or its packed pair).
        self.incoming: list[tuple[Any, Any, int]] = []
        #: Number of this member's last publication acknowledged (or dropped
        #: because it was left alone): everything after it is in flight.
        self.acked_through = -1
        #: When the flush timer fires (armed when the buffer fills).
        self.flush_due = math.inf
        #: When a waiting join asks again.
        self.retry_due = math.inf
        #: The effect whose answer the core waits for, if any.
        self.waiting: Effect | None = None
        #: The procedure waiting for the answer to ``waiting``, or
        self._proc: _Proc | None = None
        #: the hot path's next step (after the delivery of an activity).
        self._then: Any = None
        self._proc_is_call = False
        self._effects: list[Effect] = []
        self._next_tag = 0
        self.now = 0.0
        self._handlers: dict[type, Any] = {
            Activity: self._on_ring_message,
            Catchup: self._on_ring_message,
            CheckNeighbours: self._on_ring_message,
            TakeBroadcasts: self._on_take_broadcasts,
            Tick: self._on_tick,
            Idle: self._on_idle,
            NeighbourDown: self._on_down,
            MembershipChecked: self._on_membership_checked,
            ConfirmedBroadcast: self._on_confirmed_broadcast,
            JoinRequest: self._on_join_request,
            AwaitReady: self._on_await_ready,
            ValidateMembers: self._on_validate_members,
            CheckStop: self._on_check_stop,
            Start: self._on_start,
            Leave: self._on_leave,
        }

    # -- the driver's interface ---------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Own messages handed over, buffered or not yet acknowledged."""
        return len(self.incoming) + self.pub_count - self.acked_through

    @property
    def ready(self) -> bool:
        """Holds a members state (its first catch-up, or alone)."""
        return self.members_state is not None

    def offer(self, msg: Any, wire: Any, size_hint: int) -> bool:
        """Take a broadcast from the owner; True if a :class:`TakeBroadcasts` must follow."""
        incoming = self.incoming
        incoming.append((msg, wire, size_hint))
        return len(incoming) == 1

    def offer_within(self, limit: int, msg: Any, wire: Any, size_hint: int) -> int:
        """:meth:`offer` if fewer than ``limit`` own messages are in flight
        (:attr:`in_flight`): 1 if a :class:`TakeBroadcasts` must follow, 0 if
        not; -1, not taken, at the limit. (The owner's hot path: one call.)"""
        incoming = self.incoming
        if len(incoming) + self.pub_count - self.acked_through >= limit:
            return -1
        incoming.append((msg, wire, size_hint))
        return 1 if len(incoming) == 1 else 0

    def effects(self) -> list[Effect]:
        """What to do, in order; an effect needing an answer comes last."""
        effects = self._effects
        if not effects:
            return []
        self._effects = []
        return effects

    def next_deadline(self) -> float:
        """When the driver must feed :class:`Tick` (math.inf: never)."""
        return min(self.flush_due, self.retry_due)

    def handle(self, event: Event, now: float) -> None:
        """Feed one event in (``now`` on the driver's clock)."""
        self.now = now
        cls = type(event)
        if self.waiting is not None:
            self._answer(event)
        elif (
            cls is Activity
            and self.members_state is not None
            and self.phase is not _STOPPED
            and event.version <= self.view.version
        ):
            # The hot path, with no procedure: the left's activity at our view.
            self._on_current_activity(event)
        else:
            handler = self._handlers.get(cls)
            if handler is None:
                self._unexpected(event, "it is not an event of the ring")
                return
            if self.phase is _STOPPED and cls is not Leave:
                self._unexpected(event, "the member has stopped")
                return
            if self.phase is _JOINING and cls is not Start and cls is not Leave:
                self._unexpected(event, "the member is still joining")
                return
            result = handler(event)
            if result is not None:
                self._proc_is_call = cls in _CALLS
                self._advance(result, None, None)
            else:
                self._finish(cls in _CALLS)
        self._arm_flush(now)

    def _arm_flush(self, now: float) -> None:
        """After a whole event: a buffer that filled starts the flush timer."""
        if self.waiting is None and self.buffer and self.flush_due == math.inf:
            # Unlike gm, the timer is not cancelled when the buffer empties:
            # under load that would arm and cancel one per flush. It fires at
            # most every 25 ms and flushes whatever is buffered then.
            self.flush_due = now + BROADCAST_TIMER

    def _unexpected(self, event: Event, why: str) -> None:
        if self.strict:
            raise ProtocolError(f"member {self.self_id}: unexpected {event!r}: {why}")
        log.debug("member %s discards %r: %s", self.self_id, event, why)

    def handle_delivered(self, count: int, stop: Stop | None, now: float) -> None:
        """``handle(Delivered(count, stop), now)``, the driver's shortcut for the hot path."""
        then = self._then
        if then is not None and type(self.waiting) is Deliver:
            self.now = now
            self._then = None
            self.waiting = None
            then(count, stop)
            self._arm_flush(now)
        else:
            self.handle(Delivered(count, stop), now)

    def _answer(self, event: Event) -> None:
        waiting = self.waiting
        assert waiting is not None
        cls = type(event)
        if cls not in _ANSWERS[type(waiting)]:
            # Never dropped silently: the member is stuck without its answer.
            raise ProtocolError(
                f"member {self.self_id} waits for the answer to {waiting!r}, got {event!r}"
            )
        then = self._then
        if then is not None:  # (only a Delivered: see _on_current_activity)
            self._then = None
            self.waiting = None
            then(event.count, event.stop)
            return
        proc = self._proc
        assert proc is not None
        if cls is StoreResult:
            self._advance(proc, event.result, None)
        elif cls is StoreFailed or cls is CallFailed:
            self._advance(proc, None, event.error)
        elif cls is CallResult:
            self._advance(proc, event.reply, None)
        elif cls is Tick:
            self.retry_due = math.inf
            self._advance(proc, None, None)
        else:  # Delivered, CallbackDone
            self._advance(proc, event, None)

    def _advance(self, proc: _Proc, value: Any, error: BaseException | None) -> None:
        """Run ``proc`` to its next wait, or to its end."""
        self.waiting = None
        try:
            effect = proc.send(value) if error is None else proc.throw(error)
        except StopIteration:
            self._proc = None
            self._finish(self._proc_is_call)
            return
        except _StopMember as stop:
            self._proc = None
            self._stop(stop.reason)
            return
        except StoreUnavailable as exc:
            self._proc = None
            log.info("member %s of group %r stops: %s", self.self_id, self.group_name, exc)
            self._stop(exc)
            return
        except OrphanedJoin as exc:
            self._proc = None
            self.phase = _STOPPED
            self._effects.append(Rejoin(exc))
            return
        self._proc = proc
        self.waiting = effect
        self._effects.append(effect)

    def _finish(self, is_call: bool) -> None:
        """After a whole event: a deferred stop with nothing in flight happens now."""
        if is_call or self.phase is _STOPPED:
            return
        try:
            self._check(None)
        except _StopMember as stop:
            self._stop(stop.reason)

    # -- stopping ---------------------------------------------------------------

    def _check(self, result: Stop | None) -> None:
        """Act on a callback's Stop: at once, or once nothing is in flight."""
        if result is not None and self.shutting_down is None:
            self.shutting_down = result.reason
            self.phase = _SHUTTING_DOWN
        if self.shutting_down is not None and not self.has_pending():
            raise _StopMember(self.shutting_down)

    def has_pending(self) -> bool:
        """Own messages buffered, or anybody's publications unacknowledged here."""
        return bool(self.buffer) or has_pending(self.members_state)

    def _stop(self, reason: Any) -> None:
        self.stop_reason = reason
        self.phase = _STOPPED
        for _pub, reply_to in self.confirms:
            self._effects.append(Reply(reply_to, ShuttingDown(reason)))
        self.confirms.clear()
        self._effects.append(StopMember(reason))

    def _on_check_stop(self, _event: CheckStop) -> None:
        return None

    # -- joining ------------------------------------------------------------------

    def _on_start(self, _event: Start) -> _Proc:
        return self._join()

    def _join(self) -> _Proc:
        """Join the ring to the right of a random alive member (Lemma 2)."""
        me = self.self_id
        group: Group | None = yield Read()
        # gm's make_member: never recreate the group below a version seen.
        min_version = group.version if group is not None else 0
        while True:
            if group is None or not group.alive:
                # Also when every recorded member is dead: prune and recreate
                # (the reference copy crashed here, RabbitMQ bug 26173).
                group = _lost((yield Transact(PruneOrCreate(me, min_version))))
            if group.is_alive(me):
                break
            left = self._rng.choice(group.alive)
            try:
                reply = yield CallLeft(left, AddOnRight(me))
            except ActorError:
                # The chosen left is dead: record it and try again.
                result = yield Transact(RecordDead(me, left, verify=False))
                group = None if isinstance(result, LostMembership) else result
                if group is not None and group.is_alive(me):
                    # It recorded us and died before handing over its state
                    # (Lemma 2's window; the schedule explorer found it).
                    # Nobody else can give us that state, and a later left's
                    # is not it: leave as a dead member with nothing in
                    # flight and join again under a new id.
                    yield Transact(RecordDead(me, me, verify=False))
                    raise OrphanedJoin(
                        f"{me} was recorded in group {self.group_name!r} by {left}, "
                        "which died before handing over its state"
                    ) from None
                continue
            if isinstance(reply, NotReady):
                self.retry_due = self.now + JOIN_RETRY_DELAY
                yield Wait(self.retry_due)
                group = yield Read()
                continue
            assert isinstance(reply, Group)
            group = reply
            self.join_left = left
            break
        self.view = group_to_view(group)
        self.phase = _AWAITING_STATE
        if self.view.alive == [me]:
            self._become_ready({})
        self._check_neighbours()
        joined: CallbackDone = yield Callback("joined", (sorted(self.view.known),))
        if joined.stop is not None:
            # Acted on by the CheckStop the driver posts once it runs.
            self.shutting_down = joined.stop.reason
            self.phase = _SHUTTING_DOWN
        self.membership_check_due = self.now + self.membership_check_interval

    def _become_ready(self, members_state: MembersState) -> None:
        self.members_state = members_state
        if self.phase is _AWAITING_STATE:
            self.phase = _LIVE
        for reply_to in self.ready_waiters:
            self._effects.append(Reply(reply_to, True))
        self.ready_waiters.clear()

    def _on_await_ready(self, event: AwaitReady) -> None:
        if self.members_state is not None:
            self._effects.append(Reply(event.reply_to, True))
        else:
            self.ready_waiters.append(event.reply_to)

    def _on_leave(self, _event: Leave) -> _Proc | None:
        self.phase = _STOPPED
        if self.stop_reason is None:
            self.stop_reason = "normal"
        if self.members_state is None:
            return None
        return self._leave()

    def _leave(self) -> _Proc:
        # Broadcasts accepted before the leave still go out.
        try:
            yield from self._take_broadcasts()
        except _StopMember:
            pass
        self._flush()

    # -- broadcasting -------------------------------------------------------------

    def _on_take_broadcasts(self, _event: TakeBroadcasts) -> _Proc | None:
        return self._take_broadcasts() if self.incoming else None

    def _take_broadcasts(self) -> _Proc:
        """Handle every broadcast handed over so far, in order.

        Each is delivered here (``handle_msg`` with this member as sender),
        then buffered for the next flush; alone, delivery is all there is.
        """
        me = self.self_id
        while self.incoming:
            batch, self.incoming = self.incoming, []
            if self.shutting_down is not None:
                self._dropped(len(batch))
                break
            # Delivered as handed over, ``(msg, wire, size_hint)`` each: no copy.
            done: Delivered = yield Deliver((OwnBroadcasts(me, batch),), True)
            self.delivered += done.count
            if self.right[0] != me:
                self._publish(batch if done.count == len(batch) else batch[: done.count])
            if done.count < len(batch):
                self._dropped(len(batch) - done.count, done.stop)
            # Deferred while our messages are in flight: the rest of the
            # batch is dropped above.
            self._check(done.stop)

    def _dropped(self, count: int, stop: Stop | None = None) -> None:
        reason = self.shutting_down if stop is None else stop.reason
        log.warning(
            "member %s is shutting down (%r): %d broadcasts dropped", self.self_id, reason, count
        )

    def _publish(self, batch: list[tuple[Any, Any, int]]) -> None:
        buffer = self.buffer
        budget = self.max_batch_bytes
        for msg, wire, size_hint in batch:
            if budget is not None:
                # Cut batches by encoded bytes: no activity may exceed the
                # frame budget, whatever the size hints. (A plain message
                # travels as itself: its bound.)
                size = PLAIN_BOUND if wire is msg else len(wire[1])
                if buffer and self.buffer_bytes + size > budget:
                    self._flush(cut=True)
                    buffer = self.buffer
                self.buffer_bytes += size
            self.pub_count += 1
            buffer.append(wire)
            if size_hint:
                self.buffer_size += size_hint
                if self.buffer_size > MAX_BUFFER_SIZE:
                    self._flush()
                    buffer = self.buffer

    def _on_confirmed_broadcast(self, event: ConfirmedBroadcast) -> _Proc:
        yield from self._take_broadcasts()  # they were handed over first
        me = self.self_id
        if self.shutting_down is not None:
            self._effects.append(Reply(event.reply_to, ShuttingDown(self.shutting_down)))
            return
        if self.right[0] == me:
            done: Delivered = yield Deliver((ActivityEntry(me, 0, (event.msg,)),), False)
            self.delivered += done.count
            self._effects.append(Reply(event.reply_to, True))
            self._check(done.stop)
            return
        # Published as a broadcast is, then flushed at once: the reply waits
        # for its number to come back acknowledged.
        self.incoming.append((event.msg, event.wire, 0))
        yield from self._take_broadcasts()
        self.confirms.append((self.pub_count, event.reply_to))
        self._flush()

    def _on_tick(self, _event: Tick) -> None:
        if self.now >= self.flush_due:
            self.flush_due = math.inf
            self._flush()

    def _on_idle(self, _event: Idle) -> None:
        self._flush()

    def _flush(self, *, cut: bool = False) -> None:
        """Send the buffered broadcasts right as one activity."""
        if not self.buffer:
            return
        assert self.members_state is not None
        pubs, self.buffer, self.buffer_size, self.buffer_bytes = self.buffer, [], 0, 0
        first = self.pub_count - len(pubs) + 1
        right = self.right[0]
        if right != self.self_id:
            self._effects.append(
                Send(
                    right,
                    Activity(
                        self.view.version,
                        self.self_id,
                        (ActivityEntry(self.self_id, first=first, pubs=tuple(pubs)),),
                    ),
                    cut,
                )
            )
        state_for(self.members_state, self.self_id).join_pubs(first, pubs)

    def _send_right(self, msg: Activity | Catchup) -> None:
        right = self.right[0]
        if right != self.self_id:
            self._effects.append(Send(right, msg))

    def _confirm_through(self, last: int) -> None:
        confirms = self.confirms
        while confirms and confirms[0][0] <= last:
            self._effects.append(Reply(confirms.popleft()[1], True))

    def _all_acked(self) -> None:
        """Left alone: nothing of ours can be in flight any more."""
        self.acked_through = self.pub_count

    # -- ring messages ------------------------------------------------------------

    def _on_ring_message(self, msg: Activity | Catchup | CheckNeighbours) -> _Proc:
        if self.members_state is None:
            # Before our first state only the catch-up of the member that
            # recorded our join counts (Lemma 2: we start with exactly its
            # state), whatever the views say by then: it was sent before the
            # reply to our join, so it is on its way. Everything else is held
            # until then and handled after it, in order: the decision for
            # RabbitMQ bug 26171 (a CheckNeighbours) and PR 10356 (any other
            # message). Dropping them loses a later left's catch-up, and
            # acting on them first (refreshing the view) makes the first
            # catch-up look like a stray (both found by the explorer).
            if type(msg) is Catchup and msg.sender == self.join_left:
                self._send_right(Catchup(self.view.version, self.self_id, msg.state))
                self._become_ready(build_members_state(msg.state))
                # (Our first state is this catch-up: if its sender is our left
                # by now, its activities count from here.)
                self.left_caught_up = msg.sender == self.left[0]
                self.replaying.extend(self.held)
                self.held.clear()
                while self.replaying:
                    yield from self._on_ring_message(self.replaying.popleft())
            else:
                self.held.append(msg)
            return
        if msg.version > self.view.version:
            group: Group | None = yield Read()
            if group is None or not group.is_alive(self.self_id):
                raise _StopMember("shutdown")
            view = group_to_view(group)
            self.members_state = remove_erased_members(self.members_state, view)
            self._check((yield from self._change_view(view)))
        if type(msg) is Activity:
            if msg.sender != self.left[0] or not self.left_caught_up:
                return  # only the left's activity counts: anything else is a stray
            if not self.checking_membership and self.now >= self.membership_check_due:
                self.checking_membership = True
                self._effects.append(CheckMembership())
            yield from self._process_activity(msg.entries)
        elif type(msg) is Catchup:
            if msg.sender != self.left[0]:
                return  # not from our left (any more): a stray, discarded
            self.left_caught_up = True
            assert self.members_state is not None
            entries = catchup_entries(self.members_state, dict(msg.state), self.self_id, self.view)
            # What a catch-up brings can exceed one frame: it goes right in parts.
            yield from self._process_activity(entries, split=True)

    def _on_current_activity(self, msg: Activity) -> None:
        """An activity at our view, without a procedure (``_on_ring_message`` is
        the general case, and this its fast path: the same steps)."""
        if msg.sender != self.left[0] or not self.left_caught_up:
            self._finish(False)  # only the left's activity counts: a stray
            return
        if not self.checking_membership and self.now >= self.membership_check_due:
            self.checking_membership = True
            self._effects.append(CheckMembership())
        out = self._take_activity(msg.entries, split=False)
        for entry in out:
            if entry.pubs:
                effect = Deliver(out, self.max_batch_bytes is not None)
                self.waiting = effect
                self._then = self._current_activity_delivered
                self._effects.append(effect)
                return
        self._current_activity_delivered(0, None)

    def _current_activity_delivered(self, count: int, stop: Stop | None) -> None:
        self.delivered += count
        if self.view.members[self.self_id].aliases:
            self._proc_is_call = False
            self._advance(self._erase_then_check(stop), None, None)
            return
        if stop is not None or self.shutting_down is not None:
            try:
                self._check(stop)
            except _StopMember as stopping:
                self._stop(stopping.reason)
        # (No _finish: its check has just been made.)

    def _erase_then_check(self, stop: Stop | None) -> _Proc:
        self._check((yield from self._maybe_erase_aliases(self.view)))
        self._check(stop)

    def _take_activity(self, entries: Any, *, split: bool) -> list[ActivityEntry]:
        """Fold ``entries`` into the state, answer confirms, pass the result right."""
        assert self.members_state is not None
        out, own_acked = calculate_activity(self.members_state, entries, self.self_id, self.view)
        if own_acked >= 0:
            self.acked_through = own_acked
            self._confirm_through(own_acked)
        if out:
            if split and self.max_batch_bytes is not None:
                # (An activity from the left fits a frame, and what goes on
                # is no larger: only a catch-up's needs cutting.)
                for part in split_entries(out, self.max_batch_bytes):
                    self._send_right(Activity(self.view.version, self.self_id, tuple(part)))
            else:
                self._send_right(Activity(self.view.version, self.self_id, tuple(out)))
        return out

    def _process_activity(self, entries: Any, *, split: bool = False) -> _Proc:
        out = self._take_activity(entries, split=split)
        stop = None
        # Deliver before erasing (gm erases first): an erasure can report a
        # publisher of this very batch dead, and nothing may be delivered
        # from a member after its death was reported (found by the explorer).
        for entry in out:
            if entry.pubs:
                done: Delivered = yield Deliver(out, self.max_batch_bytes is not None)
                self.delivered += done.count
                stop = done.stop
                break
        view = self.view
        if view[self.self_id].aliases:
            self._check((yield from self._maybe_erase_aliases(view)))
        self._check(stop)

    def _on_membership_checked(self, checked: MembershipChecked) -> None:
        self.checking_membership = False
        self.membership_check_due = self.now + self.membership_check_interval
        outcome = checked.outcome
        if isinstance(outcome, StoreUnavailable):
            log.info("member %s of group %r stops: %s", self.self_id, self.group_name, outcome)
            self._stop(outcome)
        elif outcome is None or not outcome.is_alive(self.self_id):
            self._stop("shutdown")

    # -- joins of others ------------------------------------------------------------

    def _on_join_request(self, event: JoinRequest) -> _Proc | None:
        if self.members_state is None:
            self._effects.append(Reply(event.reply_to, NotReady()))
            return None
        return self._add_on_right(event)

    def _add_on_right(self, event: JoinRequest) -> _Proc:
        me, new_member = self.self_id, event.new_member
        group = _lost((yield Transact(RecordNewMember(me, new_member))))
        if not group.is_alive(me):
            raise _StopMember("shutdown")
        view = group_to_view(group)
        assert self.members_state is not None
        self.members_state = remove_erased_members(self.members_state, view)
        # After the commit, never inside the transaction: a retried
        # transaction would send it twice.
        self._effects.append(
            Send(new_member, Catchup(view.version, me, prepare_snapshot(self.members_state)))
        )
        result = yield from self._change_view(view)
        try:
            self._check(result)
        except _StopMember:
            self._effects.append(Reply(event.reply_to, group))  # the joiner is in
            raise
        self._effects.append(Reply(event.reply_to, group))

    def _on_validate_members(self, event: ValidateMembers) -> _Proc | None:
        births, deaths = births_and_deaths(event.members, self.view.known)
        if not (births or deaths):
            return None
        return self._report(births, deaths)

    def _report(self, births: list[MemberId], deaths: list[MemberId]) -> _Proc:
        done: CallbackDone = yield Callback("members_changed", (births, deaths))
        self._check(done.stop)

    # -- deaths, views, aliases -----------------------------------------------------

    def _on_down(self, down: NeighbourDown) -> _Proc | None:
        if down.tag == self.left[1]:
            member = self.left[0]
        elif down.tag == self.right[1]:
            member = self.right[0]
        else:
            return None  # a monitor we no longer care about
        return self._record_down(member)

    def _record_down(self, member: MemberId) -> _Proc:
        me = self.self_id
        # verify=True: lost membership (RabbitMQ issue 714) is found here.
        group = _lost((yield Transact(RecordDead(me, member, verify=True))))
        view = group_to_view(group)
        if view.alive == [me]:
            # Alone: nobody else can hold anything in flight. Blank the
            # state and answer confirms *before* erasing aliases, or the
            # erasure waits for ever (RabbitMQ bug 26119).
            self._alone()
            self._check((yield from self._maybe_erase_aliases(view)))
        else:
            self._check((yield from self._change_view(view)))

    def _maybe_erase_aliases(self, view: View) -> Generator[Any, Any, Stop | None]:
        assert self.members_state is not None
        if view[self.self_id].aliases:
            erasable = erasable_aliases(self.members_state, self.self_id, view)
            if erasable:
                for member in erasable:
                    self.members_state.pop(member, None)
                group = _lost((yield Transact(EraseMembers(self.self_id, tuple(erasable)))))
                view = group_to_view(group)
        if view is self.view:
            return None
        return (yield from self._change_view(view))

    def _change_view(self, view: View) -> Generator[Any, Any, Stop | None]:
        """Adopt ``view``: report births and deaths, then re-check neighbours.

        Every view change does both (RabbitMQ bug 26084).
        """
        births, deaths = births_and_deaths(self.view.known, view.known)
        self.view = view
        if self.members_state is not None:
            # Whoever's change brought the view (a refresh, or our own
            # transaction's result): publishers erased in it are gone, and
            # their entries would stay pending for ever, since activities
            # for them are dropped (found by the explorer with 4 members).
            self.members_state = remove_erased_members(self.members_state, view)
        result = None
        if births or deaths:
            done: CallbackDone = yield Callback("members_changed", (births, deaths))
            result = done.stop
        self._check_neighbours()
        if view.alive == [self.self_id] and (self.members_state or self.confirms):
            # Alone through a view change made by someone else (our DOWNs
            # for the dead were demonitored): nobody is left to acknowledge
            # anything, exactly as after our own DOWN (found by the explorer).
            self._alone()
            erased = yield from self._maybe_erase_aliases(view)
            result = result or erased
        return result

    def _alone(self) -> None:
        """Blank the state and answer confirms: nobody else can hold anything."""
        self.held.clear()  # from members that are gone: strays
        self.members_state = {}
        self._confirm_through(self.pub_count)
        if self.ready_waiters or self.phase is _AWAITING_STATE:
            self._become_ready({})
        self._all_acked()

    def _check_neighbours(self) -> None:
        me = self.view[self.self_id]
        version = self.view.version
        old_right = self.right
        old_left = self.left[0]
        self.left = self._ensure_neighbour(version, self.left, me.left)
        if self.left[0] != old_left:
            # A new left sends its catch-up when it finds us its right; what
            # it sent us before is from an earlier time it was our left (found
            # by the explorer: A -> B -> A, and A's stale activity after a
            # gap was taken as news).
            self.left_caught_up = False
        self.right = self._ensure_neighbour(version, self.right, me.right)
        if self.right[0] == self.self_id and self.buffer:
            # Alone: buffered messages were delivered here at broadcast.
            self.buffer, self.buffer_size, self.buffer_bytes = [], 0, 0
            self._all_acked()
        if (
            self.right[0] != old_right[0]
            and self.right[0] != self.self_id
            and self.members_state is not None
        ):
            self._effects.append(
                Send(
                    self.right[0],
                    Catchup(version, self.self_id, prepare_snapshot(self.members_state)),
                )
            )

    def _ensure_neighbour(
        self,
        version: int,
        current: tuple[MemberId, int | None],
        wanted: MemberId,
    ) -> tuple[MemberId, int | None]:
        me = self.self_id
        current_id, tag = current
        if current_id == wanted:
            return current
        check = CheckNeighbours(version)
        effects = self._effects
        if current_id != me:
            assert tag is not None
            effects.append(Demonitor(tag))
            effects.append(Send(current_id, check))
        if wanted == me:
            return (me, None)
        effects.append(Send(wanted, check))
        self._next_tag += 1
        effects.append(Monitor(wanted, self._next_tag))
        return (wanted, self._next_tag)


def down_priority(core: RingCore, target: MemberId) -> int:
    """The mailbox priority of the DOWN of ``target`` (see :func:`priority`)."""
    if core.members_state is None:
        return 0  # must not overtake the first catch-up
    if target == core.left[0]:
        # By target, not by tag: in a ring of two the left is also the
        # right, and the right's DOWN would overtake it.
        return 0
    return 1  # do not keep sending into a dead right


def priority(core: RingCore, event: Event) -> int:
    """The mailbox priority of ``event`` for ``core``: higher is handled first,
    FIFO within a priority (RabbitMQ bug 24944 and the lost last activity).

    A membership check's outcome overtakes everything, the flush timer too:
    a member found recorded dead must stop before it delivers, acknowledges
    or sends anything more. The flush timer overtakes the rest: a buffer
    must leave within the flush interval however busy the mailbox. A
    neighbour's DOWN overtakes, except the left's (it must not overtake the
    left's last activity) and any before the first catch-up.
    """
    cls = type(event)
    if cls is MembershipChecked:
        return 2
    if cls is Tick:
        return 1
    if cls is NeighbourDown:
        return down_priority(core, event.target)
    return 0
