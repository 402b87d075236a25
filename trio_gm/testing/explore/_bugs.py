"""Defects the explorer can inject, one per invariant, each a small break of one rule.

A defect is a :class:`~trio_gm.ring.core.RingCore` subclass and/or a
mailbox priority function; :data:`BUGS` maps the name ``--inject-bug``
takes to the pair (``None``: the ring as shipped). Each must be caught
within the explorer's default schedules (``tests/explorer`` checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ...ring.core import (
    Callback,
    ConfirmedBroadcast,
    Deliver,
    MembershipChecked,
    NeighbourDown,
    Reply,
    RingCore,
    Tick,
    priority,
)
from ...ring.messages import Activity, ActivityEntry, Catchup, CheckNeighbours
from ...ring.view import births_and_deaths

Priority = Callable[[RingCore, Any], int]


def _nothing() -> Any:
    return
    yield  # a generator that ends at once


class SkipCatchupAfterDeath(RingCore):
    """Every catch-up after the first is ignored.

    After a death (or a join) the new left's catch-up is what tells a member
    the publications and acknowledgements lost with the dead link.
    Breaks: well-formedness (the proof sketch), loss.
    """

    def _on_ring_message(self, msg: Activity | Catchup | CheckNeighbours) -> Any:
        if type(msg) is Catchup and self.members_state is not None:
            return _nothing()
        return super()._on_ring_message(msg)


class AcksBeforePubs(RingCore):
    """Forwarded publications wait; the next activity overtakes them.

    An activity carrying other members' publications is held back and sent
    only after the next activity (typically acknowledgements), so the right
    sees acknowledgements before the publications they acknowledge.
    Breaks: well-formedness.
    """

    _held: Activity | None = None

    def _send_right(self, msg: Activity | Catchup) -> None:
        if type(msg) is not Activity:
            super()._send_right(msg)
            return
        held = self._held
        if held is None and any(e.pubs and e.publisher != self.self_id for e in msg.entries):
            self._held = msg
            return
        self._held = None
        super()._send_right(msg)
        if held is not None:
            super()._send_right(held)


def left_down_overtakes(core: RingCore, event: Any) -> int:
    """Every DOWN after the first catch-up gets priority 1 (the RabbitMQ 3.3.2 bug).

    The left's DOWN then overtakes the left's last activity, which arrives
    from a member no longer the left and is discarded.
    Breaks: the left's DOWN never overtakes the left.
    """
    if type(event) is NeighbourDown and core.members_state is not None:
        return 1
    return priority(core, event)


class ConfirmAtPublish(RingCore):
    """A confirmed broadcast is answered as soon as it is sent right.

    Breaks: a confirmed broadcast returns only after every member alive
    throughout has delivered it.
    """

    def _on_confirmed_broadcast(self, event: ConfirmedBroadcast) -> Any:
        yield from super()._on_confirmed_broadcast(event)
        if self.confirms and self.confirms[-1][1] is event.reply_to:
            self.confirms.pop()
            self._effects.append(Reply(event.reply_to, True))


class JoinerDeliversHistory(RingCore):
    """A joiner delivers what its first catch-up holds pending (as news).

    Breaks: a joiner never delivers a message published before it joined.
    """

    def _on_ring_message(self, msg: Activity | Catchup | CheckNeighbours) -> Any:
        if type(msg) is Catchup and self.members_state is None and msg.sender == self.join_left:
            return self._deliver_history(msg)
        return super()._on_ring_message(msg)

    def _deliver_history(self, msg: Catchup) -> Any:
        entries = tuple(
            ActivityEntry(p, s.pending_first, s.pending) for p, s in msg.state if s.pending
        )
        if entries:
            yield Deliver(entries, self.max_batch_bytes is not None)
        yield from super()._on_ring_message(msg)


class MembershipCheckIgnored(RingCore):
    """A membership check that finds the member recorded dead is ignored.

    Breaks: a member recorded dead while it runs stops with ``shutdown``
    before it delivers or acknowledges anything more.
    """

    def _on_membership_checked(self, checked: MembershipChecked) -> None:
        self.checking_membership = False
        self.membership_check_due = self.now + self.membership_check_interval


def membership_check_waits(core: RingCore, event: Any) -> int:
    """A membership check's outcome waits behind queued ring messages (priority 0).

    Breaks: a member recorded dead delivers nothing more once its check
    has found out (it handles what was queued first).
    """
    if type(event) is MembershipChecked:
        return 0
    return priority(core, event)


class FlushTimerIgnored(RingCore):
    """The flush timer flushes nothing: only an idle mailbox flushes.

    Breaks: the buffer leaves within the flush interval however busy the
    mailbox.
    """

    def _on_tick(self, _event: Tick) -> None:
        return None


class AloneKeepsState(RingCore):
    """Real defect, found by the explorer and fixed: a member left alone by a
    view change other than its own DOWN kept its state and confirms.

    Its DOWNs had been demonitored, so nobody would ever acknowledge its
    pending entries. Breaks: nothing left unacknowledged at the end.
    """

    def _change_view(self, view: Any) -> Any:
        births, deaths = births_and_deaths(self.view.known, view.known)
        self.view = view
        result = None
        if births or deaths:
            done = yield Callback("members_changed", (births, deaths))
            result = done.stop
        self._check_neighbours()
        return result


#: Injectable defects: name -> (core class, mailbox priority).
BUGS: Final[dict[str | None, tuple[type[RingCore], Priority]]] = {
    None: (RingCore, priority),
    "skip-catchup-after-death": (SkipCatchupAfterDeath, priority),
    "acks-before-pubs": (AcksBeforePubs, priority),
    "left-down-overtakes": (RingCore, left_down_overtakes),
    "confirm-at-publish": (ConfirmAtPublish, priority),
    "joiner-delivers-history": (JoinerDeliversHistory, priority),
    "membership-check-ignored": (MembershipCheckIgnored, priority),
    "membership-check-waits": (RingCore, membership_check_waits),
    "flush-timer-ignored": (FlushTimerIgnored, priority),
    "alone-keeps-state": (AloneKeepsState, priority),
}
