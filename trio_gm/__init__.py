"""trio_gm: RabbitMQ's Guaranteed Multicast (gm) ring protocol on trio."""

from __future__ import annotations

from ._exceptions import (
    ActorError,
    ActorStopped,
    CallTimeout,
    CookieError,
    MemberStopped,
    NoSuchActor,
    StoreConfigError,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    TrioGMError,
    WouldDeadlock,
)
from ._ids import ActorId, MemberId
from .node import DEFAULT_MAX_IN_FLIGHT, Member, Node, open_node
from .ring.member import Become, GroupInfo, MemberStatistics, Stop
from .store import (
    Group,
    GroupMember,
    GroupStore,
    LostMembership,
    RetryPolicy,
    StoreStatistics,
    open_store,
)

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "ActorError",
    "ActorId",
    "ActorStopped",
    "Become",
    "CallTimeout",
    "CookieError",
    "Group",
    "GroupInfo",
    "GroupMember",
    "GroupStore",
    "LostMembership",
    "Member",
    "MemberId",
    "MemberStatistics",
    "MemberStopped",
    "NoSuchActor",
    "Node",
    "RetryPolicy",
    "Stop",
    "StoreConfigError",
    "StoreConflict",
    "StoreError",
    "StoreStatistics",
    "StoreUnavailable",
    "TrioGMError",
    "WouldDeadlock",
    "open_node",
    "open_store",
]
