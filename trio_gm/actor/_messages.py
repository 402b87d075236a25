"""Values the actor runtime hands to actors and takes back from them.

Everything an actor can put in a message is a plain value: ids, references
and envelopes are frozen attrs classes with no Python object references in
them, so that a later transport can carry them between processes unchanged.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from .._ids import ActorId


@attrs.frozen(order=True)
class MonitorRef:
    """Names one monitor: returned by ``monitor`` and carried by its ``Down``."""

    node: str
    serial: int


@attrs.frozen
class From:
    """Where a call's reply goes: kept by a handler to reply later."""

    node: str
    tag: int


@attrs.frozen(order=True)
class TimerRef:
    """Names one ``send_after`` timer, for ``cancel_timer``."""

    node: str
    serial: int


@attrs.frozen
class Down:
    """The info message a monitor delivers once its target has stopped.

    ``reason`` is ``"normal"`` or ``"shutdown"`` for an orderly stop, the
    reason given to ``StopActor``, ``"killed"`` after ``kill()``, ``"noproc"``
    when the target did not exist when it was monitored, ``"noconnection"`` when
    the target's node became unreachable, or the exception that crashed it.
    """

    ref: MonitorRef
    target: ActorId
    reason: Any


@attrs.frozen
class Timeout:
    """The info message of the timeout idiom (gen_server's ``timeout``)."""


#: The one ``Timeout`` value; compare with ``==`` or ``isinstance``.
TIMEOUT: Final = Timeout()


class _Hibernate:
    """Sentinel type of ``HIBERNATE``."""

    _instance: _Hibernate | None = None

    def __new__(cls) -> _Hibernate:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "HIBERNATE"


#: A handler's timeout that means "once the mailbox is empty, call the
#: actor's ``idle()`` hook, then wait for the next message" (the place of
#: gen_server2's hibernation).
HIBERNATE: Final = _Hibernate()


class _NoReplyValue:
    def __repr__(self) -> str:
        return "NO_REPLY"


#: Default of ``StopActor.reply`` and ``BecomeActor.reply``: send the caller nothing.
NO_REPLY: Final = _NoReplyValue()

TimeoutSpec = float | _Hibernate | None
"""A handler's timeout: None waits forever, 0 delivers ``Timeout`` as soon
as the mailbox is empty, a positive number delivers it after that many
seconds without a message, ``HIBERNATE`` runs the idle hook."""


def _check_timeout(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or value is HIBERNATE:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value >= 0):
        raise ValueError(
            f"{type(instance).__name__}.{attribute.name} must be None, HIBERNATE or a "
            f"number of seconds >= 0, got {value!r}"
        )


@attrs.frozen
class Reply:
    """Answer the call now with ``value``; then wait as ``timeout`` says."""

    value: Any
    timeout: TimeoutSpec = attrs.field(default=None, validator=_check_timeout)


@attrs.frozen
class NoReply:
    """Send no reply now (a handler may reply later through its ``From``)."""

    timeout: TimeoutSpec = attrs.field(default=None, validator=_check_timeout)


@attrs.frozen
class StopActor:
    """Stop the actor with ``reason`` after replying ``reply`` to a call."""

    reason: Any = "normal"
    reply: Any = NO_REPLY


@attrs.frozen
class BecomeActor:
    """Carry on with another callback object (gen_server2's ``become``).

    The new object receives every later message; ``init`` is not called on
    it. In ``handle_call``, ``reply`` answers the call first.
    """

    behaviour: Any
    timeout: TimeoutSpec = attrs.field(default=None, validator=_check_timeout)
    reply: Any = NO_REPLY


Result = Reply | NoReply | StopActor | BecomeActor | None
"""What a handler returns. None from ``handle_cast``/``handle_info`` means
``NoReply()``; ``handle_call`` must say what it does with the call."""
