"""Exceptions leave trio_gm's ``async with`` blocks as themselves.

The blocks of trio_gm that run tasks (``open_node(..., listen=...)``,
``node.open_member``, ``ActorNode.open_actor``) each hold a nursery, and a
trio nursery hands whatever leaves it on inside an ExceptionGroup. Those
nurseries are opened with strict exception groups, so what leaves one is
always a group trio made for it (never the user's own), and
:func:`raise_unwrapped` takes exactly that one level off:

* one failure (the user's exception, or the crash of the member or actor the
  block owns) comes out as itself, cancellations beside it dropped. A group
  the user raised is that one failure: it comes out untouched;
* only cancellations: the first, which the cancelled scope catches as it
  would have caught the group (a cancellation stays pending in its scope in
  any case: the next checkpoint there raises it again);
* several failures at once (the user's exception while the member crashed):
  the group, so that none is lost, with a note naming the block; if one of
  them is a KeyboardInterrupt, a KeyboardInterrupt caused by the group.

The exception raised keeps its own traceback, ``__cause__`` and
``__context__`` (the group it was taken out of is not made its context).
A group the block raised comes out as that very object: on its way out of
the cancelled nursery trio splits cancellations out of it, which copies the
groups (not the exceptions in them), so the block's own is put back.
"""

from __future__ import annotations

from typing import NoReturn

import trio


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: not isinstance(e, trio.Cancelled)) is None
    return isinstance(exc, trio.Cancelled)


def _copy_of(exc: BaseException, original: BaseException) -> bool:
    """Whether ``exc`` is ``original``, or a copy trio made of that group."""
    if exc is original:
        return True
    if not (isinstance(exc, BaseExceptionGroup) and isinstance(original, BaseExceptionGroup)):
        return False
    return (
        type(exc) is type(original)
        and exc.message == original.message
        and len(exc.exceptions) == len(original.exceptions)
        and all(map(_copy_of, exc.exceptions, original.exceptions))
    )


def raise_unwrapped(
    group: BaseExceptionGroup[BaseException], where: str, raised: BaseException | None = None
) -> NoReturn:
    """Raise what ``group``, raised by the nursery of ``where``, stands for.

    ``raised`` is what the block itself raised, if anything.
    """
    __tracebackhide__ = True
    failures = [exc for exc in group.exceptions if not _is_cancellation(exc)]
    if len(failures) == 1:
        failure = failures[0]
        if raised is not None and failure is not raised and _copy_of(failure, raised):
            failure = raised
        _reraise(failure)
    if not failures:
        _reraise(group.exceptions[0])
    group.add_note(f"these {len(failures)} exceptions were raised together in {where}")
    if any(isinstance(exc, KeyboardInterrupt) for exc in failures):
        raise KeyboardInterrupt from group
    _reraise(group)


def _reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` without making the exception being handled its context."""
    __tracebackhide__ = True
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context  # no reference cycle through this frame
