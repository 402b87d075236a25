"""The exceptions trio_gm raises.

The tree, written down once::

    TrioGMError
    ├── ActorError                  the actor runtime
    │   ├── NoSuchActor             a call to an id no actor answers to
    │   ├── ActorStopped            a call to an actor that stopped before replying
    │   └── CallTimeout             a call not answered in time (also a TimeoutError)
    ├── MemberStopped               a call on a gm member that has stopped
    ├── CookieError                 a cookie file that is unsafe or unreadable (also a ValueError)
    └── StoreError                  the group store
        ├── StoreConfigError        a bad URL or a missing driver: fix the configuration
        ├── StoreUnavailable        the database cannot be reached or refused us
        └── StoreConflict           a transaction kept conflicting after every retry

Messages say what was expected and what was found. Low-level errors (from
SQLAlchemy, the database driver, the network) are translated at the edge with
``raise ... from exc`` so the original stays attached as ``__cause__``.

A crash inside an actor is not wrapped: the actor's own exception propagates
out of the ``async with`` block that owns it, the way a failed child escapes
a trio nursery (so with trio's strict exception groups it arrives inside an
``ExceptionGroup``, as any nursery failure does).
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
