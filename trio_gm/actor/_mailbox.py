"""The priority mailbox (gen_server2's process mailbox plus priority queue).

gen_server2 drains the Erlang process mailbox into a priority queue on every
turn of its loop, asking the callback module for each message's priority
against its *current* state; the highest priority goes first and messages of
equal priority keep their arrival order. ``Mailbox`` does the same in two
stages:

* ``send_nowait`` appends to an unbounded inbound deque. It never blocks and
  never fails while the mailbox is open: members of a ring send to each other
  and a bounded buffer anywhere in a ring deadlocks it (flow control belongs
  at the edges).
* ``receive_nowait`` first moves everything inbound through the
  ``prioritise`` function (when there is one), then pops the best item.
  Priority-0 items, the common case, stay in a plain deque; only others go
  into a heap keyed ``(-priority, seq)``, so an actor that never uses
  priorities pays for none of it.

As trio's memory channels do, the logic lives in the ``*_nowait`` methods and
``receive`` is a thin async wrapper that parks until something arrives. The
mailbox is built on the primitives trio's memory channels are built on
(``wait_task_rescheduled`` and ``reschedule``, for its single consumer)
rather than on a channel object, because a channel's ``send_nowait`` costs
about three times a deque append and this is the hottest path of the whole
library.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio


@attrs.frozen
class MailboxStatistics:
    """A snapshot of a mailbox."""

    #: Messages waiting: not yet prioritised plus prioritised.
    length: int
    #: Messages ever accepted by ``send_nowait``.
    received: int
    #: Whether the owner is parked waiting for a message.
    waiting: bool
    closed: bool


class _Empty:
    """The type of :data:`EMPTY`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EMPTY"


#: What :meth:`Mailbox.pop` returns when nothing waits.
EMPTY: Final = _Empty()


class Mailbox:
    """An unbounded, optionally prioritised, single-consumer mailbox."""

    __slots__ = (
        "_heap",
        "_inbound",
        "_normal",
        "_received",
        "_seq",
        "_waiter",
        "closed",
        "prioritise",
    )

    def __init__(self) -> None:
        self._inbound: deque[Any] = deque()
        self._normal: deque[Any] = deque()
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = 0
        #: The task parked in ``wait_nonempty``, if any (one consumer only).
        self._waiter: trio.lowlevel.Task | None = None
        #: Whether the mailbox refuses new items (its actor has stopped).
        self.closed = False
        self._received = 0
        #: Called on each item as it leaves the inbound queue; returns its
        #: priority (higher first). None: every item has priority 0.
        self.prioritise: Callable[[Any], int] | None = None

    def __len__(self) -> int:
        return len(self._inbound) + len(self._normal) + len(self._heap)

    def send_nowait(self, item: Any) -> None:
        """Append ``item``; raises ``trio.ClosedResourceError`` once closed."""
        if self.closed:
            raise trio.ClosedResourceError("this mailbox is closed")
        self._inbound.append(item)
        self._received += 1
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    def _sort_inbound(self) -> None:
        prioritise = self.prioritise
        inbound = self._inbound
        assert prioritise is not None
        while inbound:
            item = inbound.popleft()
            priority = prioritise(item)
            if priority == 0:
                self._normal.append(item)
            else:
                self._seq += 1
                heapq.heappush(self._heap, (-priority, self._seq, item))

    def pop(self) -> Any:
        """Pop the best waiting item, or return :data:`EMPTY` (no exception:
        an actor's loop finds its mailbox empty once per message when idle)."""
        if self.prioritise is None:
            # Items queued while a prioritise function was set go first:
            # they arrived earlier.
            if self._heap or self._normal:
                return self._pop_sorted()
            if self._inbound:
                return self._inbound.popleft()
            return EMPTY
        if self._inbound:
            self._sort_inbound()
        if self._heap or self._normal:
            return self._pop_sorted()
        return EMPTY

    def receive_nowait(self) -> Any:
        """Pop the best waiting item; raises ``trio.WouldBlock`` if none."""
        item = self.pop()
        if item is EMPTY:
            raise trio.WouldBlock
        return item

    def _pop_sorted(self) -> Any:
        heap = self._heap
        if heap and (heap[0][0] < 0 or not self._normal):
            return heapq.heappop(heap)[2]
        return self._normal.popleft()

    async def wait_nonempty(self) -> None:
        """Park until the mailbox holds something (checkpoints either way)."""
        if self._inbound or self._normal or self._heap:
            await trio.lowlevel.checkpoint()
            return
        if self.closed:
            await trio.lowlevel.checkpoint()  # a cancellation that closed it lands here
            raise trio.ClosedResourceError("this mailbox is closed")
        if self._waiter is not None:
            raise trio.BusyResourceError("another task is already waiting on this mailbox")
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def receive(self) -> Any:
        """Wait for and pop the best item."""
        while True:
            try:
                item = self.receive_nowait()
            except trio.WouldBlock:
                await self.wait_nonempty()
            else:
                await trio.lowlevel.checkpoint()
                return item

    def close(self) -> list[Any]:
        """Refuse further items and return those still waiting, best first."""
        self.closed = True
        left: list[Any] = []
        while (item := self.pop()) is not EMPTY:
            left.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)
        return left

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            length=len(self),
            received=self._received,
            waiting=self._waiter is not None,
            closed=self.closed,
        )
