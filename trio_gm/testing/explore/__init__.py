"""A deterministic schedule explorer for the ring, after RabbitMQ's gm_qc.

RabbitMQ found several gm bugs only once a model test controlled every
message, monitor and transaction of the ring. This package does that for
trio_gm and checks much more than "no message lost".

What is explored
================
A group of :class:`~trio_gm.ring.core.RingCore` members (3, 4 or 5 at the
start, drawn per schedule), each the protocol of one member with no I/O,
driven in a plain loop with no trio (:mod:`._harness`). The harness plays
the actor driver (its mailbox, prioritised on receive as
:class:`~trio_gm.actor._mailbox.Mailbox` does; the order of its effects;
the idle flush; the flush timer; the membership check beside the ring; the
leave) and the world: ring messages wait in per-link FIFO queues, the
join's ``AddOnRight`` call and its reply travel on links too, a stopped
member's DOWN is queued on each link target -> watcher after everything
the target sent on it, and store operations wait as pending transactions
that run one at a time on an in-memory group with the op's own ``apply``.
A schedule is a list of step values (``0..STEP_MAX``); each picks one of
the enabled actions:

* deliver the head of one link (an idle member handles everything, a busy
  one the best message of its mailbox);
* post the head of one link without handling it (the member is busy), or
  have a busy member handle one message: a mailbox can stay full while
  time passes;
* deliver *everything* queued for one member at once, so that its mailbox
  priorities decide the order;
* run one pending transaction, or one membership check's read;
* broadcast (1 to 3 messages), or start a confirmed broadcast;
* kill a member (optionally right after its pending transaction commits,
  before it sees the result), start a join, make a member leave;
* partition two neighbours: both links cut, each given the other's DOWN
  (optionally with one already recorded dead by the other, as a partial
  partition leaves it: it runs on, recorded dead, until it finds out);
* move the clock 30 ms (past the flush timer) or 300 ms.

Membership checks run on every activity (one at a time): the interleavings
of the shipped interval are among these. After every step the invariants
are checked. After the last step the harness drains (handles, delivers and
runs everything, lets timers fire), has every survivor make one more
confirmed broadcast (views refresh only on traffic), drains again, and runs
the final checks. A seeded generator draws the group size and step lists
(biased to short lists and first options, as a property-based tester
would), and a failing schedule is shrunk greedily; a schedule replays from
its step list
(``--members N --replay ...``). An orphaned joiner joins again under a new
id, as ``open_member`` does.

Invariants checked after every step
===================================
*Views only move forward*: a running member's view version never decreases
and is never newer than the store's.

*Inheritance*: in the stored ring every dead member has exactly one heir
(the next alive member after it), and at most one running member's own
view lists a dead member among its aliases.

*Well-formedness (gm.erl's proof sketch)*. Let the ring be the running
members in stored-ring order (members marked dead, or dead but not yet
recorded, are skipped). For a member M, a publisher P and a publication n
pending at M (seen, not seen acknowledged), let H be who speaks for P: P if
it runs, else the first running member after P in the stored ring. X
*knows the publication* if its ``last_pub`` for P is >= n; X *knows the
acknowledgement* if it knows the publication and n is before its first
pending number (retired). H has *converted* n if it knows its acknowledgement.

* If H has not converted n, the publication must be in flight from M to H:
  along the path M -> ... -> H (the whole ring if M is H), wherever a
  member knows it and the next one does not (H itself counts as not
  knowing: the publication has to come back to it), the hop must carry it.
* If H has converted n, the acknowledgement must be in flight from H to M:
  along H -> ... -> M, wherever a member knows it and the next does not (M
  does not), the hop must carry it.

A hop from X to its ring successor Y *carries* an item when either X does
not yet have Y as its right (it will send Y a catch-up of its whole state
when it learns), or a message waiting for Y (queued on the link, or posted
to Y's mailbox and not yet handled) from X or from a dead member between
them holds it: an ``Activity`` entry with that publication, or an
acknowledgement up to at least n, or a ``Catchup`` whose snapshot has n
pending (for a publication) or retired (for an acknowledgement). Before
Y's first catch-up only a ``Catchup``, or an ``Activity`` queued behind
one, counts (an earlier activity is dropped). A member still waiting for
its first catch-up holds no entries of its own; it is a hop that knows
nothing. Pending entries for a publisher erased from the stored ring are a
violation.

*The left's DOWN never overtakes the left*: when a member handles the
``Down`` of its current left, no ring message that left sent may still be
waiting in its mailbox (gm relies on it: the left's last activity would be
discarded as a stray).

*A confirmed broadcast returns only after every member alive throughout
has delivered it*: when a member answers a confirm, every member in the
stored ring and running both when it was published and now has delivered
it (handing a batch to ``handle_msg`` is one step here).

*A joiner never delivers history*: nothing at or below what its first
catch-up holds for a publisher (``last_pub``) is delivered to it.

*A member recorded dead stops before it delivers or acknowledges anything
more*: once a membership check's read has found it recorded dead (its
outcome is posted), it delivers nothing and sends no activity.

*The buffer leaves within the flush interval*: a member whose buffer has
waited 25 ms handles no ordinary (priority 0) message before it flushes.

Also on every callback: no death is reported for a member never
announced, and no message arrives from a member before it was announced;
no member crashes.

Checks at the end
=================
Every survivor holds its first state, nothing unacknowledged, nothing
buffered, and its view's alive members are the store's; no dead member is
left in the stored ring and its alive members are exactly the survivors.
No message is lost: if a message's publisher survived, or any survivor got
it, every survivor that was alive in the stored ring when it was published
got it. Each member got each sender's messages in publication order, with
no gap and no duplicate. Every confirmed broadcast returned (successfully
if its publisher survived). Every killed or departed member stopped, and
one that left got ``handle_terminate(..., "normal")``; nobody else stopped.

Ring defects it found, now fixed
===============================
The explorer found the defects below in the ring (gm.erl behaves the same
way in each); all are fixed in :mod:`trio_gm.ring`. The first five were
found by the explorer of actors under trio that this one replaced; their
schedules were step lists of that harness and do not replay here
(``alone-keeps-state`` is an injected defect now, and the others are
guarded by the unit tests of ``members_state`` and ``core``). The last was
found by this one, and ``tests/explorer`` replays its schedule.

``alias-ack-lost``
    A joiner copies its left's entry for a dead member the left inherited
    (pending empty, ``last_ack`` behind ``last_pub``). After another death
    the joiner's catch-up reset the heir's ``last_ack`` for that alias to
    the copied value (gm takes the left's ``last_ack`` as it is), and the
    acknowledgements lost with the dead member never came round again: the
    alias was never erased, and every member had ``has_pending`` for ever.
    Fixed in :func:`trio_gm.ring.members_state.catchup_entries`: for a publisher
    the member speaks for, ``last_ack`` becomes the largest of its own, the
    left's, and what the left has retired (``pending_first - 1``, or
    ``last_pub`` with nothing pending) capped at its own ``last_pub``; it
    never moves backwards.
``alone-keeps-state``
    A member became alone through a view change other than handling its
    own ``Down`` (for example, a joiner recorded its last neighbour dead
    and the member adopted the view on its own erase transaction). Its
    neighbour's ``Down`` messages were demonitored, so the "alone" branch
    of ``_on_down`` (blank the state, answer confirms) never ran: it kept
    pending entries nobody would acknowledge unless someone joined. Fixed
    in ``RingCore._change_view``: a view that leaves the member alone
    while it holds state or confirms blanks the state, answers the
    confirms and erases the aliases, as after its own ``Down``
    (``RingCore._alone``).
``orphan-join``
    The chosen left commits a join and dies before sending the catch-up.
    The joiner's call fails but it finds itself in the ring and took its
    first catch-up from its new left as history: messages published after
    it joined the ring, but already in that state, never reached it; and
    if it inherited the dead left, the publications of that state it then
    spoke for never came back to it, so they were never acknowledged.
    Fixed in ``RingCore._join``: after a failed call that left the
    joiner in the stored ring, it records itself dead (nothing of it is in
    flight) and raises ``OrphanedJoin``; ``open_member`` joins again under
    a new id. (A first fix, delivering the orphan's first state, still let
    it erase its dead left too early: see below.)

Two more ring changes came with the fixes: an activity entry for a
publisher the view no longer knows (erased) is dropped rather than passed
on (:func:`~trio_gm.ring.members_state.calculate_activity`; otherwise a stale
acknowledgement loops round the ring for ever), and a member delivers an
activity's publications before it erases aliases (an erasure could report
a publisher of the batch dead before its messages were delivered).

Found with 5 members and fixed the same way: a joiner
whose first state came from a later left than the one that recorded it (an
orphan, or a joiner whose left replied and then left before it handled the
catch-up) could inherit dead members, find them with nothing pending in a
state older than their publications, and erase them at once; those
publications, coming back to it, were then never acknowledged. Now an
orphan records itself dead and ``open_member`` joins again under a new id
(``OrphanedJoin``, ``RingCore._join``), and a joiner holds every ring
message that comes before the catch-up of the member that recorded it,
then handles them in order (``RingCore._on_ring_message``).

``erased-publisher-kept`` (found with 4 members, no fault needed)
    A member adopted a view that came back from its own transaction (here
    recording a DOWN) in which another member had erased a dead
    publisher, but kept that publisher's pending entries; activities for a
    publisher the view no longer knows are dropped, so nothing ever retired
    them. Only a refresh and a join used to drop erased publishers; now
    every view change does (``RingCore._change_view``).

Injected defects
================
``--inject-bug NAME`` runs the explorer against a deliberately broken
ring (:data:`BUGS`, in :mod:`._bugs`: a core subclass and/or a mailbox
priority), one per invariant; each is caught within the default schedules
(``tests/explorer``): ``skip-catchup-after-death`` and ``acks-before-pubs``
(the proof sketch), ``left-down-overtakes`` (the RabbitMQ 3.3.2 bug),
``confirm-at-publish``, ``joiner-delivers-history``,
``membership-check-ignored`` and ``membership-check-waits`` (priority 0 for
the check's outcome), ``flush-timer-ignored``, and ``alone-keeps-state``
(the fixed defect above, put back).

Usage
=====
``python -m trio_gm.testing.explore --schedules N --seed S [--members 3,4,5]``
ends with ``N schedules, 0 violations`` (exit 0), or prints the shrunk
failing schedule, its trace, a state dump at the first violation and a
``--replay`` command, and exits 1. ``--jobs J`` (default: the CPUs
available) runs the schedules in J worker processes: they are drawn in the
same order in the parent, and the failure reported is the first in that
order, so the outcome does not depend on J. From code, :func:`explore`
(``jobs=1`` by default) and :func:`run_schedule`.
"""

from __future__ import annotations

from ._bugs import BUGS
from ._driver import DEFAULT_SCHEDULES, ExploreResult, explore, main
from ._harness import STEP_MAX, Harness, ScheduleReport, run_schedule

__all__ = [
    "BUGS",
    "DEFAULT_SCHEDULES",
    "STEP_MAX",
    "ExploreResult",
    "Harness",
    "ScheduleReport",
    "explore",
    "main",
    "run_schedule",
]
