"""The actor runtime: a port of RabbitMQ's gen_server2 to trio.

An actor is one trio task draining one priority mailbox. Actors are named by
plain ``ActorId`` values and reach each other only through an ``ActorNode``.
See ``_server`` for how an actor stops and ``_mailbox`` for priorities.
"""

from __future__ import annotations

from .._ids import ActorId
from ._mailbox import Mailbox, MailboxStatistics
from ._messages import (
    HIBERNATE,
    NO_REPLY,
    TIMEOUT,
    BecomeActor,
    Down,
    From,
    MonitorRef,
    NoReply,
    Reply,
    StopActor,
    Timeout,
    TimerRef,
)
from ._node import DEFAULT_CALL_TIMEOUT, ActorNode, NodeStatistics
from ._server import TERMINATE_TIMEOUT, Actor, ActorContext, ActorHandle, ActorStatistics

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "HIBERNATE",
    "NO_REPLY",
    "TERMINATE_TIMEOUT",
    "TIMEOUT",
    "Actor",
    "ActorContext",
    "ActorHandle",
    "ActorId",
    "ActorNode",
    "ActorStatistics",
    "BecomeActor",
    "Down",
    "From",
    "Mailbox",
    "MailboxStatistics",
    "MonitorRef",
    "NoReply",
    "NodeStatistics",
    "Reply",
    "StopActor",
    "Timeout",
    "TimerRef",
]
