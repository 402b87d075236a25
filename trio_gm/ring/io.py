"""The seam between a member and the world: sends, monitors, transactions.

Everything a member does that another member or the store can observe goes
through one ``RingIO`` object (gm.erl's ``INSTR_MOD`` plus its transaction
function): casting a ring message to a neighbour, the synchronous
``AddOnRight`` call of a join, monitoring a neighbour, and each store
operation. The default, :class:`ActorRingIO`, goes straight to the actor
node and the store; a test harness can pass its own and hold, reorder or
drop any of them.

Store operations are values (:data:`StoreOp`), so a harness can see which
change a member asked for before it runs.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import attrs

from .._ids import MemberId
from ..actor import ActorContext, MonitorRef
from ..store import Group, GroupStore, LostMembership
from .messages import AddOnRight, RingMessage


@attrs.frozen
class PruneOrCreate:
    """Create the group with only ``self_id``, unless someone in it is alive."""

    self_id: MemberId
    min_version: int


@attrs.frozen
class RecordNewMember:
    """Insert ``new`` to the right of ``left`` (who must be alive)."""

    left: MemberId
    new: MemberId


@attrs.frozen
class RecordDead:
    """Mark ``member`` dead; with ``verify``, only while ``self_id`` is alive."""

    self_id: MemberId
    member: MemberId
    verify: bool


@attrs.frozen
class EraseMembers:
    """Remove the dead markers of ``members``, while ``self_id`` is alive."""

    self_id: MemberId
    members: tuple[MemberId, ...]


StoreOp = PruneOrCreate | RecordNewMember | RecordDead | EraseMembers


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
        store, name = self._store, self._group
        match op:
            case PruneOrCreate(self_id, min_version):
                return await store.prune_or_create_group(name, self_id, min_version)
            case RecordNewMember(left, new):
                return await store.record_new_member(name, left, new)
            case RecordDead(self_id, member, verify):
                return await store.record_dead_member(name, self_id, member, verify=verify)
            case EraseMembers(self_id, members):
                return await store.erase_members(name, self_id, members)
        raise TypeError(f"unknown store operation {op!r}")  # pragma: no cover
