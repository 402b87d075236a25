"""trio_gm: RabbitMQ's Guaranteed Multicast (gm) ring protocol on trio."""

from __future__ import annotations

from ._exceptions import (
    ActorError,
    ActorStopped,
    CallTimeout,
    MemberStopped,
    NoSuchActor,
    StoreConfigError,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    TrioGMError,
)
from ._ids import ActorId, MemberId

__all__ = [
    "ActorError",
    "ActorId",
    "ActorStopped",
    "CallTimeout",
    "MemberId",
    "MemberStopped",
    "NoSuchActor",
    "StoreConfigError",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "TrioGMError",
]
