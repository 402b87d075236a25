"""The ring protocol: guaranteed multicast among the members of a group.

Theory of operation (gm.erl's argument, carried over)
=====================================================

What is guaranteed
------------------
A message broadcast by member P reaches every member that was in the group
before it and stays in it; if P publishes m then m', a member that receives
m' received m first (order per sender, no gaps). Nothing more: there is no
total order across senders and no causal order. A message keeps propagating
while any member that has it survives; a confirmed broadcast returns once
the message has reached every member.

Why a ring
----------
A fan-out from the sender raises the question "who finishes the fan-out if
the sender dies half way?". In a ring each member sends only to its right
neighbour, so responsibility is simple: when a member dies, its nearest
alive upstream neighbour becomes the left of its right, and the nearest
alive downstream member *inherits* the dead one (its *alias*). A
publication goes round once; when it comes back to its publisher (or its
heir) every member has it, and it goes round again as an acknowledgement
that lets every member forget it. So every member keeps every message it
has seen until the acknowledgement passes: that is what lets the ring heal.

State
-----
For each publisher, each member keeps the publications it has seen but not
seen acknowledged, the last publication number and the last
acknowledgement (``members_state.PublisherState``). The member's own and its
aliases' entries record acknowledgements *retired* (come back), not merely
passed on.

Lemma 1: inheritance needs a total order of membership changes
---------------------------------------------------------------
If B dies while B' joins between A and C, either B' or C must inherit B,
and exactly one. Members agree on who inherits whom because every change
to the membership is one SERIALIZABLE read-modify-write of one stored row,
so changes are totally ordered and each yields a new *view version*
(``trio_gm.store``). A view (``view.group_to_view``) is a pure function of
one stored version.

Lemma 2: a joiner starts with its left's state, atomically
-----------------------------------------------------------
A new member first calls its chosen left (``AddOnRight``); the left records
it in the store and only after the commit sends it a catch-up of its whole
state. Had the joiner added itself, the left could die before handing over
the state, leaving the joiner responsible for messages it never saw. If the
left dies first, the joiner's call fails, it records the left dead and
tries again elsewhere.

Lemma 3: a message from view N can be handled by any view >= N
---------------------------------------------------------------
Every ring message carries its sender's view version; a member with an
older view refreshes it from the store before acting on the message, so it
learns of a death before it handles the messages that death made it
responsible for. Views only grow more informed, and a dead member is
erased from the stored ring only once its heir has seen its last
publication acknowledged (``members_state.erasable_aliases``): then nothing of it
can be in flight.

Catch-up
--------
When a member gets a new left (after a death or a join), the left sends its
whole state; the member computes what it missed (``members_state.catchup_entries``:
acknowledgements the left has and it has not, publications the left has
beyond its own) and handles that as an activity from the left.

Well-formedness (the invariant the schedule explorer checks)
------------------------------------------------------------
Dead members are inherited by exactly one alive member; for every entry in
anyone's pending publications, either the publication is in flight
downstream of that member and upstream of its publisher, or its
acknowledgement is in flight downstream of the publisher and upstream of
the member.

Layout
------
``view`` and ``members_state`` are pure functions over plain values;
``messages`` are the attrs values members exchange; ``core`` is the
protocol of one member as a state machine with no I/O (events in, effects
out: every rule is there); ``member`` is the actor that drives a core: it
performs the effects (sends, monitors, store operations, callbacks) and
feeds their answers back.
"""
