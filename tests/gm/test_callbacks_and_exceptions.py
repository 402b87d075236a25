"""Issue 11, sections 2 and 3: callbacks may talk to their own member, and
exceptions come out of trio_gm's blocks as themselves.

A plain ``def`` callback cannot await, so it reaches its member's async API
the one way it can: by handing back the coroutine (``return self.react()``),
which the member awaits in the callback's place. ``kill()`` is plain, and is
called from plain callbacks directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_gm
from tests.gm_helpers import Blocker, Events, Reporter

GROUP = "callbacks"
COOKIE = "test-cookie"

Action = Callable[[trio_gm.Member], Awaitable[Any]]


@asynccontextmanager
async def a_node(store: trio_gm.GroupStore, listen: bool) -> AsyncIterator[trio_gm.Node]:
    """A node of one process, or one with a network side."""
    if listen:
        async with trio_gm.open_node(store, listen="127.0.0.1:0", cookie=COOKIE) as node:
            yield node
    else:
        async with trio_gm.open_node(store) as node:
            yield node


# -- section 2: callbacks may talk to their own member --------------------------------


class SelfCaller(Reporter):
    """Runs ``action(own member)`` from callback ``when`` (on "go" for handle_msg).

    What the action returns is reported as ``("answer", label, value)``;
    ``("after", label)`` once it has returned, and ``("finally", label)``
    however the callback ends.
    """

    def __init__(self, events: Events, when: str, action: Action) -> None:
        super().__init__(events)
        self.when = when
        self.action = action
        self.member: trio_gm.Member | None = None

    def _cued(self, callback: str, msg: Any = "go") -> bool:
        return callback == self.when and msg == "go" and self.member is not None

    async def react(self, args: Any) -> None:
        assert self.member is not None
        try:
            self.events.add(("answer", args, await self.action(self.member)))
            self.events.add(("after", args))
        finally:
            self.events.add(("finally", args))


class PlainSelfCaller(SelfCaller):
    """Plain callbacks, handing back the coroutine that talks to the member."""

    def members_changed(
        self, args: Any, births: list[trio_gm.MemberId], deaths: list[trio_gm.MemberId]
    ) -> Any:
        super().members_changed(args, births, deaths)
        return self.react(args) if self._cued("members_changed") else None

    def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> Any:
        super().handle_msg(args, sender, msg)
        return self.react(args) if self._cued("handle_msg", msg) else None

    def handle_terminate(self, args: Any, reason: Any) -> Any:
        super().handle_terminate(args, reason)
        return self.react(args) if self._cued("handle_terminate") else None


class AsyncSelfCaller(SelfCaller):
    """``async def`` callbacks, awaiting the member themselves."""

    async def members_changed(  # type: ignore[override]
        self, args: Any, births: list[trio_gm.MemberId], deaths: list[trio_gm.MemberId]
    ) -> None:
        super().members_changed(args, births, deaths)
        if self._cued("members_changed"):
            await self.react(args)

    async def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:  # type: ignore[override]
        super().handle_msg(args, sender, msg)
        if self._cued("handle_msg", msg):
            await self.react(args)

    async def handle_terminate(self, args: Any, reason: Any) -> None:  # type: ignore[override]
        super().handle_terminate(args, reason)
        if self._cued("handle_terminate"):
            await self.react(args)


STYLES = {"plain": PlainSelfCaller, "async": AsyncSelfCaller}


def _answer(label: str) -> Callable[[tuple[Any, ...]], bool]:
    return lambda e: e[:2] == ("answer", label)


async def _cue(
    node: trio_gm.Node, events: Events, callbacks: SelfCaller, when: str
) -> tuple[trio_gm.Member, list[trio_gm.MemberId], tuple[Any, ...]]:
    """Make ``callbacks``' member "a" run its action from ``when``.

    Returns the member, the alive members it sees then, and the answer.
    handle_msg and members_changed run with a second member "b" in the
    ring (b's "go" reaches a through the ring); handle_terminate runs as a
    lone a leaves its block.
    """
    async with node.open_member(GROUP, callbacks, "a") as a:
        callbacks.member = a
        if when == "handle_terminate":
            expected = [a.id]
        else:
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                expected = sorted([a.id, b.id])
                if when == "handle_msg":
                    await b.broadcast("go")
                answer = await events.receive(_answer("a"))
                # Past the answer: the member goes on taking calls.
                await b.confirmed_broadcast("after the answer")
                assert await a.group_members() == expected
            return a, expected, answer
    return a, expected, await events.receive(_answer("a"))


CALLBACKS = ["handle_msg", "members_changed", "handle_terminate"]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("when", CALLBACKS)
async def test_group_members_from_own_callback_answers_at_once(
    sqlite_store: trio_gm.GroupStore, events: Events, when: str, style: str
) -> None:
    callbacks = STYLES[style](events, when, lambda m: m.group_members())
    async with trio_gm.open_node(sqlite_store) as node:
        _a, expected, answer = await _cue(node, events, callbacks, when)
    assert answer[2] == expected
    await events.expect("after", "a")


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("when", CALLBACKS)
async def test_info_from_own_callback_answers_at_once(
    sqlite_store: trio_gm.GroupStore, events: Events, when: str, style: str
) -> None:
    callbacks = STYLES[style](events, when, lambda m: m.info())
    async with trio_gm.open_node(sqlite_store) as node:
        _a, expected, answer = await _cue(node, events, callbacks, when)
    assert answer[2] == trio_gm.GroupInfo(GROUP, callbacks, expected)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("when", CALLBACKS)
async def test_statistics_from_own_callback_answers_at_once(
    sqlite_store: trio_gm.GroupStore, events: Events, when: str, style: str
) -> None:
    callbacks = STYLES[style](events, when, lambda m: m.statistics())
    async with trio_gm.open_node(sqlite_store) as node:
        a, expected, answer = await _cue(node, events, callbacks, when)
    stats = answer[2]
    assert isinstance(stats, trio_gm.MemberStatistics)
    assert (stats.id, stats.group_name, stats.ring_size) == (a.id, GROUP, len(expected))


@pytest.mark.parametrize("style", STYLES)
async def test_confirmed_broadcast_from_own_callback_raises_would_deadlock(
    sqlite_store: trio_gm.GroupStore, events: Events, style: str
) -> None:
    async def confirm(member: trio_gm.Member) -> Any:
        with pytest.raises(trio_gm.WouldDeadlock) as info:
            await member.confirmed_broadcast("inner")
        return info.value

    callbacks = STYLES[style](events, "handle_msg", confirm)
    async with trio_gm.open_node(sqlite_store) as node:
        a, _expected, answer = await _cue(node, events, callbacks, "handle_msg")
    error = answer[2]
    # In the documented tree, and still what it was before: a RuntimeError.
    assert isinstance(error, trio_gm.TrioGMError)
    assert isinstance(error, RuntimeError)
    assert f"confirmed_broadcast from a callback of member {a.id}" in str(error)
    assert "would deadlock" in str(error)
    # Nothing was sent, and the member carried on.
    assert not [e for e in events.log if e[0] == "msg" and e[3] == "inner"]
    await events.expect("terminate", "a", "normal")


def _delivered(events: Events, label: str) -> list[Any]:
    return [e[3] for e in events.log if e[:2] == ("msg", label)]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("sender", ["ring", "own"])
async def test_leave_from_handle_msg_acts_as_stop_normal_once_it_returns(
    sqlite_store: trio_gm.GroupStore, events: Events, style: str, sender: str
) -> None:
    """As ``Stop("normal")``: the rest of the batch is not delivered.

    ``ring``: a batch from b reaches a through the ring; ``own``: a's own
    batch, delivered to a as it is broadcast (the rest is then not sent).
    """
    callbacks = STYLES[style](events, "handle_msg", lambda m: m.leave())
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, callbacks, "a") as a:
            callbacks.member = a
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                publisher = b if sender == "ring" else a
                for msg in ["m1", "go", "m2"]:
                    await publisher.broadcast(msg)  # one batch
                # leave() returned at once, and the callback went on.
                await events.expect("after", "a")
                await events.expect("terminate", "a", "normal")
                await events.expect("members_changed", "b", [], [a.id])
                assert _delivered(events, "a") == ["m1", "go"]
                await b.confirmed_broadcast("b carries on")
                assert not a.alive
                with pytest.raises(trio_gm.MemberStopped):
                    await a.group_members()
    # What a sent before the leave went round; what the leave cut was not sent.
    assert _delivered(events, "b") == [
        "m1",
        "go",
        *(["m2"] if sender == "ring" else []),
        "b carries on",
    ]


@pytest.mark.parametrize("style", STYLES)
async def test_leave_from_members_changed_acts_as_stop_normal(
    sqlite_store: trio_gm.GroupStore, events: Events, style: str
) -> None:
    callbacks = STYLES[style](events, "members_changed", lambda m: m.leave())
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, callbacks, "a") as a:
            callbacks.member = a
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                await events.expect("after", "a")
                await events.expect("terminate", "a", "normal")
                await events.expect("members_changed", "b", [], [a.id])
                await b.confirmed_broadcast("b carries on")
                assert await b.group_members() == [b.id]


@pytest.mark.parametrize("style", STYLES)
async def test_leave_from_handle_terminate_returns_at_once(
    sqlite_store: trio_gm.GroupStore, events: Events, style: str
) -> None:
    """The member is already leaving: leave() does nothing, and never hangs."""
    callbacks = STYLES[style](events, "handle_terminate", lambda m: m.leave())
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "b") as b:
            async with node.open_member(GROUP, callbacks, "a") as a:
                callbacks.member = a
            await events.expect("terminate", "a", "normal")
            await events.expect("after", "a")
            await events.expect("members_changed", "b", [], [a.id])
            await b.confirmed_broadcast("b carries on")


class Killer(Reporter):
    """Calls ``member.kill()`` from a plain handle_msg on "go"."""

    def __init__(self, events: Events) -> None:
        super().__init__(events)
        self.member: trio_gm.Member | None = None

    def _kill(self, args: Any) -> None:
        assert self.member is not None
        try:
            self.member.kill()
            self.events.add(("after", args))  # never: kill() does not return here
        finally:
            self.events.add(("finally", args))

    def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:
        super().handle_msg(args, sender, msg)
        if msg == "go":
            self._kill(args)


class AsyncKiller(Killer):
    """Calls ``member.kill()`` from an async handle_msg on "go", between awaits."""

    async def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        super().handle_msg(args, sender, msg)
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("style", STYLES)
async def test_kill_from_own_callback_ends_the_member_there(
    sqlite_store: trio_gm.GroupStore, events: Events, style: str
) -> None:
    """kill() does not return: nothing more is delivered, no handle_terminate."""
    callbacks = (Killer if style == "plain" else AsyncKiller)(events)
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, callbacks, "a") as a:
            callbacks.member = a
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                for msg in ["m1", "go", "m2"]:
                    await b.broadcast(msg)  # one batch
                await events.expect("finally", "a")
                await events.expect("members_changed", "b", [], [a.id])
                await b.confirmed_broadcast("b carries on")
                assert _delivered(events, "a") == ["m1", "go"]
                assert not a.alive
                with pytest.raises(trio_gm.MemberStopped):
                    await a.statistics()
        # The block of a killed member ends quietly, as after an owner's kill().
    assert not [e for e in events.log if e[0] in ("after", "terminate") and e[1] == "a"]


async def test_kill_from_handle_terminate_cuts_it_short(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    members: list[trio_gm.Member] = []

    class KillsOnTerminate(Reporter):
        def handle_terminate(self, args: Any, reason: Any) -> None:
            super().handle_terminate(args, reason)
            members[0].kill()
            self.events.add(("after", args))  # never

    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "b") as b:
            async with node.open_member(GROUP, KillsOnTerminate(events), "a") as a:
                members.append(a)
            await events.expect("terminate", "a", "normal")
            await events.expect("members_changed", "b", [], [a.id])
            await b.confirmed_broadcast("b carries on")
    assert ("after", "a") not in events.log


# -- section 3: exceptions come out as themselves ----------------------------------


@pytest.mark.parametrize("listen", [False, True], ids=["local", "listen"])
async def test_user_exception_in_open_member_block_comes_out_as_itself(
    sqlite_store: trio_gm.GroupStore, events: Events, listen: bool
) -> None:
    error = KeyError("mine")
    async with a_node(sqlite_store, listen) as node:
        with pytest.raises(KeyError) as info:
            async with node.open_member(GROUP, Reporter(events), "a"):
                raise error
        assert info.value is error
        assert info.value.__context__ is None
        await events.expect("terminate", "a", "normal")
        # Through the node's block too.
        with pytest.raises(KeyError) as info:
            async with node.open_member(GROUP, Reporter(events), "b"):
                raise error
        assert info.value is error


async def test_user_exception_in_open_node_listen_block_comes_out_as_itself(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    error = KeyError("mine")
    with pytest.raises(KeyError) as info:
        async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE):
            raise error
    assert info.value is error
    with pytest.raises(KeyError) as info:
        async with (
            trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as node,
            node.open_member(GROUP, Reporter(events), "a"),
        ):
            raise error
    assert info.value is error
    await events.expect("terminate", "a", "normal")


class Crashing(Reporter):
    """Raises ``KeyError("crash")`` from callback ``when`` (on "crash" in handle_msg)."""

    def __init__(self, events: Events, when: str) -> None:
        super().__init__(events)
        self.when = when

    def joined(self, args: Any, members: list[trio_gm.MemberId]) -> None:
        super().joined(args, members)
        if self.when == "joined":
            raise KeyError("crash")

    def members_changed(
        self, args: Any, births: list[trio_gm.MemberId], deaths: list[trio_gm.MemberId]
    ) -> None:
        super().members_changed(args, births, deaths)
        if self.when == "members_changed":
            raise KeyError("crash")

    def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:
        super().handle_msg(args, sender, msg)
        if self.when == "handle_msg" and msg == "crash":
            raise KeyError("crash")


class AsyncCrashing(Crashing):
    async def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        super().handle_msg(args, sender, msg)


@pytest.mark.parametrize("listen", [False, True], ids=["local", "listen"])
@pytest.mark.parametrize(
    ("cls", "when"),
    [
        (Crashing, "handle_msg"),
        (AsyncCrashing, "handle_msg"),
        (Crashing, "members_changed"),
        (Crashing, "joined"),
    ],
    ids=["plain-handle_msg", "async-handle_msg", "members_changed", "joined"],
)
async def test_callback_exception_comes_out_as_itself_with_a_note(
    sqlite_store: trio_gm.GroupStore, events: Events, cls: type[Crashing], when: str, listen: bool
) -> None:
    callbacks = cls(events, when)
    ids: list[trio_gm.MemberId] = []

    async def crash(node: trio_gm.Node) -> None:
        async with node.open_member(GROUP, Reporter(events), "b") as b:
            async with node.open_member(GROUP, callbacks, "a") as a:
                ids.append(a.id)
                if when == "handle_msg":
                    await b.broadcast("crash")
                else:
                    async with node.open_member(GROUP, Reporter(events), "c"):
                        pass
                await trio.sleep_forever()

    # Out of the member's block, and out of the node's as well.
    with pytest.raises(KeyError, match="crash") as info:
        async with a_node(sqlite_store, listen) as node:
            await crash(node)
    assert len(info.value.__notes__) == 1
    note = info.value.__notes__[0]
    assert note.startswith(f"raised by {cls.__name__}.{when}, a callback of member ")
    assert note.endswith(f" of group {GROUP!r}")
    if when != "joined":  # (a joined crash leaves no handle behind)
        assert note == (
            f"raised by {cls.__name__}.{when}, a callback of member {ids[0]} of group {GROUP!r}"
        )
        terminated = await events.receive(lambda e: e[:2] == ("terminate", "a"))
        assert terminated[2] is info.value


@pytest.mark.parametrize("listen", [False, True], ids=["local", "listen"])
async def test_users_own_exception_group_is_left_untouched(
    sqlite_store: trio_gm.GroupStore, events: Events, listen: bool
) -> None:
    group = ExceptionGroup("mine", [KeyError("k")])
    with pytest.raises(ExceptionGroup) as info:
        async with (
            a_node(sqlite_store, listen) as node,
            node.open_member(GROUP, Reporter(events), "a"),
        ):
            raise group
    assert info.value is group
    assert repr(info.value.exceptions) == "(KeyError('k'),)"
    assert not hasattr(info.value, "__notes__")


async def test_exceptions_raised_together_come_out_together(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """The member crashes, and the block raises while it is cancelled: both are kept."""
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "b") as b:
            with pytest.RaisesGroup(
                pytest.RaisesExc(KeyError, match="crash"),
                pytest.RaisesExc(ValueError, match="cleanup"),
            ) as info:
                async with node.open_member(GROUP, Crashing(events, "handle_msg"), "a"):
                    await b.broadcast("crash")
                    try:
                        await trio.sleep_forever()
                    finally:
                        raise ValueError("cleanup")
            assert info.value.__notes__ == [
                f"these 2 exceptions were raised together in open_member({GROUP!r})"
            ]
            await b.confirmed_broadcast("b carries on")


@pytest.mark.parametrize("listen", [False, True], ids=["local", "listen"])
async def test_cancelling_the_block_still_leaves_cleanly(
    sqlite_store: trio_gm.GroupStore, events: Events, listen: bool
) -> None:
    async with a_node(sqlite_store, listen) as node:
        async with node.open_member(GROUP, Reporter(events), "b") as b:
            with trio.CancelScope() as scope:
                async with node.open_member(GROUP, Reporter(events), "a") as a:
                    scope.cancel()
                    await trio.sleep_forever()
            assert scope.cancelled_caught
            await events.expect("terminate", "a", "normal")
            await events.expect("members_changed", "b", [], [a.id])
            await b.confirmed_broadcast("b carries on")
    # A cancelled node block, members inside, leaves as cleanly.
    with trio.CancelScope() as scope:
        async with (
            a_node(sqlite_store, listen) as node,
            node.open_member(GROUP, Reporter(events), "c"),
        ):
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    await events.expect("terminate", "c", "normal")


async def test_keyboard_interrupt_in_the_block_comes_out_as_itself(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as info:
        async with (
            trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as node,
            node.open_member(GROUP, Reporter(events), "a"),
        ):
            raise interrupt
    assert info.value is interrupt
    await events.expect("terminate", "a", "normal")


async def test_a_broadcast_cancelled_while_it_waits_for_room_raises_cancelled_bare(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    blocker = Blocker(events, "b")
    scopes: list[trio.CancelScope] = []
    caught: list[str] = []

    async def waiting_broadcast(a: trio_gm.Member) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            try:
                await a.broadcast("waits")
            except trio.Cancelled:  # bare, not inside an ExceptionGroup
                caught.append("cancelled")
                raise
        assert scope.cancelled_caught

    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a", max_in_flight=1) as a:
            async with node.open_member(GROUP, blocker, "b"):
                await a.broadcast("block")
                await events.expect("msg", "b", a.id, "block")
                await trio.testing.wait_all_tasks_blocked()
                await a.broadcast("fills")  # b is stuck: it stays in flight
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(waiting_broadcast, a)
                    await trio.testing.wait_all_tasks_blocked()
                    assert caught == []
                    scopes[0].cancel()
                assert caught == ["cancelled"]
                blocker.release()
                await a.confirmed_broadcast("end")
    assert ("msg", "b", a.id, "waits") not in events.log


class _Plain(Reporter):
    """Plain ``handle_msg``; on "async" it becomes :class:`_Awaiting`."""

    def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> Any:
        super().handle_msg(args, sender, msg)
        if msg == "async":
            return trio_gm.Become(_Awaiting(self.events), args)
        if msg == "stop":
            return trio_gm.Stop("normal")
        return None


class _Awaiting(Reporter):
    """Async ``handle_msg`` that yields to trio; on "plain" it becomes :class:`_Plain`."""

    async def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> Any:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        super().handle_msg(args, sender, msg)
        if msg == "plain":
            return trio_gm.Become(_Plain(self.events), args)
        if msg == "stop":
            return trio_gm.Stop("normal")
        return None


@pytest.mark.parametrize("sender", ["ring", "own"])
@pytest.mark.parametrize("stop_in", ["plain", "async"])
async def test_a_batch_switching_between_plain_and_async_handle_msg_is_delivered_once_in_order(
    sqlite_store: trio_gm.GroupStore, events: Events, sender: str, stop_in: str
) -> None:
    """Plain callbacks run without a coroutine; from the first that returns
    one, the rest of the batch is awaited. Across such switches (``Become``
    both ways) and a ``Stop``, each message of one batch is delivered once,
    in order, and nothing after the Stop."""
    batch = ["m1", "async", "m2", "m3", "plain", "m4", "async", "m5"]
    batch += ["plain", "stop", "lost"] if stop_in == "plain" else ["stop", "lost"]
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, _Plain(events), "a") as a:
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                publisher = b if sender == "ring" else a
                for msg in batch:
                    await publisher.broadcast(msg)  # one batch: no checkpoint between
                await events.expect("terminate", "a", "normal")
                assert _delivered(events, "a") == batch[: batch.index("stop") + 1]
                await b.confirmed_broadcast("fence")
    # a's own batch is sent up to its Stop: what a delivered, and no more.
    sent = batch if sender == "ring" else batch[: batch.index("stop") + 1]
    assert _delivered(events, "b") == [*sent, "fence"]
