"""The exceptions trio_gm raises.

The tree, written down once::

    TrioGMError
    ├── ActorError                  the actor runtime
    │   ├── NoSuchActor             a call to an id no actor answers to
    │   ├── ActorStopped            a call to an actor that stopped before replying
    │   └── CallTimeout             a call not answered in time (also a TimeoutError)
    ├── MemberStopped               a call on a gm member that has stopped
    ├── WouldDeadlock               a call from a member's own callback that only the
    │                               member could answer, after it (also a RuntimeError)
    ├── CookieError                 a cookie file that is unsafe or unreadable (also a ValueError)
    └── StoreError                  the group store
        ├── StoreConfigError        a bad URL or a missing driver: fix the configuration
        ├── StoreUnavailable        the database cannot be reached or refused us
        └── StoreConflict           a transaction kept conflicting after every retry

Messages say what was expected and what was found. Low-level errors (from
SQLAlchemy, the database driver, the network) are translated at the edge with
``raise ... from exc`` so the original stays attached as ``__cause__``.

Nothing comes out of a trio_gm ``async with`` block wrapped in an
ExceptionGroup of trio_gm's making. An exception raised by user code inside
``open_node(...)``, ``node.open_member(...)`` or ``ActorNode.open_actor(...)``
comes out as itself (a group the user raised, untouched), and so does the
crash of the member or actor the block owns, as a failed child escapes a
trio nursery but without the group: a callback's exception carries a note
(``add_note``) naming the callback, the member and its group. Only when
several exceptions really happen at once (the user's, while the member
crashed) do they come out together, in the ExceptionGroup of the block's
nursery, noted with the block's name; a KeyboardInterrupt among them comes
out as a KeyboardInterrupt whose ``__cause__`` is that group. Cancellation
is untouched: a cancelled block leaves as trio expects.
"""

from __future__ import annotations


class TrioGMError(Exception):
    """Base class of every error trio_gm raises on purpose."""


class ActorError(TrioGMError):
    """An error of the actor runtime."""


class NoSuchActor(ActorError):
    """No actor answers to this id (Erlang's ``noproc``)."""


class ActorStopped(ActorError):
    """The actor stopped before it replied to the call."""


class CallTimeout(ActorError, TimeoutError):
    """A call was not answered within its timeout."""


class MemberStopped(TrioGMError):
    """The gm member has stopped; it no longer takes calls."""


class WouldDeadlock(TrioGMError, RuntimeError):
    """A call from a member's own callback that the member could only answer after it.

    ``confirmed_broadcast`` from a callback is one: the confirmation needs
    the member to handle more messages, which it does once the callback
    returns. ``broadcast`` never waits there; ``info()``, ``group_members()``
    and ``statistics()`` answer at once; ``leave()`` takes effect when the
    callback returns.
    """


class CookieError(TrioGMError, ValueError):
    """The node cookie file cannot be used: unreadable, empty, or unsafe.

    The message names the file and says how to fix it (for a file group or
    others have any access to: ``chmod 600 PATH``).
    """


class StoreError(TrioGMError):
    """An error of the group store."""


class StoreConfigError(StoreError):
    """The store URL is malformed, names an unknown dialect, or its driver is missing."""


class StoreUnavailable(StoreError):
    """The database could not be reached, refused the connection, or does not exist.

    Raised at ``open_store`` when the store is away at start, and by any
    operation once the store has been unreachable (or locked) for longer
    than its ``outage_timeout``; a member stopped by an outage has one as
    its stop reason.
    """

    #: The store's URL, password masked (set when an outage timed out).
    url: str | None = None
    #: Seconds the store had been away when this was raised (likewise).
    unavailable_for: float | None = None


class StoreConflict(StoreError):
    """A transaction kept failing with serialization conflicts after every retry."""
