"""The seam between a member and the world: sends, monitors, transactions.

Everything a member does that another member or the store can observe goes
through one ``RingIO`` object (gm.erl's ``INSTR_MOD`` plus its transaction
function): casting a ring message to a neighbour, the synchronous
``AddOnRight`` call of a join, monitoring a neighbour, and each store
operation. The default, :class:`ActorRingIO`, goes straight to the actor
node and the store; a test harness can pass its own and hold, reorder or
drop any of them.

Store operations are values (:data:`~trio_gm.store.ops.StoreOp`, defined
and applied in :mod:`trio_gm.store.ops` and re-exported here), so a harness
can see which change a member asked for before it runs.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from .._ids import MemberId
from ..actor import ActorContext, MonitorRef
from ..store import Group, GroupStore, LostMembership
from ..store.ops import EraseMembers, PruneOrCreate, RecordDead, RecordNewMember, StoreOp
from .messages import AddOnRight, RingMessage

__all__ = [
    "ActorRingIO",
    "EraseMembers",
    "PruneOrCreate",
    "RecordDead",
    "RecordNewMember",
    "RingIO",
    "StoreOp",
]


class RingIO(Protocol):
    """What a member needs from the world."""

    def send(self, to: MemberId, msg: RingMessage) -> None: ...

    async def call(self, to: MemberId, request: AddOnRight) -> Any: ...

    def monitor(self, target: MemberId) -> MonitorRef: ...

    def demonitor(self, ref: MonitorRef) -> None: ...

    async def transact(self, op: StoreOp) -> Group | LostMembership: ...

    async def read_group(self) -> Group | None: ...


class ActorRingIO:
    """The real thing: the actor node for messages, the store for the group."""

    def __init__(self, ctx: ActorContext, store: GroupStore, group_name: str) -> None:
        self._ctx = ctx
        self._store = store
        self._group = group_name

    def send(self, to: MemberId, msg: RingMessage) -> None:
        self._ctx.cast(to, msg)

    async def call(self, to: MemberId, request: AddOnRight) -> Any:
        return await self._ctx.call(to, request, timeout=math.inf)

    def monitor(self, target: MemberId) -> MonitorRef:
        return self._ctx.monitor(target)

    def demonitor(self, ref: MonitorRef) -> None:
        self._ctx.demonitor(ref)

    async def read_group(self) -> Group | None:
        return await self._store.read_group(self._group)

    async def transact(self, op: StoreOp) -> Group | LostMembership:
        return await self._store.transact(self._group, op)
