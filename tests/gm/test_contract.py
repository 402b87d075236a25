"""The public contract of DESIGN.md, one promise per test."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_gm
from tests.gm_helpers import Blocker, Events, Reporter

GROUP = "contract"


async def test_open_member_returns_holding_its_state(
    gm_store: trio_gm.GroupStore, events: Events
) -> None:
    """A broadcast right after open_member returns reaches everyone."""
    async with trio_gm.open_node(gm_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            for label in "bcd":
                async with node.open_member(GROUP, Reporter(events), label) as m:
                    await m.broadcast(f"first from {label}")
                    await m.confirmed_broadcast(f"confirmed from {label}")
                    stats = await m.statistics()
                    assert stats.view_version >= 1
            for label in "abcd":
                await events.receive(lambda e, lb=label: e[:2] == ("msg", lb))
            assert a.alive


async def test_leaving_by_cancellation_leaves_no_ghost(
    gm_store: trio_gm.GroupStore, events: Events
) -> None:
    async with trio_gm.open_node(gm_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            with trio.CancelScope() as scope:
                async with node.open_member(GROUP, Reporter(events), "b") as b:
                    scope.cancel()
                    await trio.sleep_forever()
            await events.expect("terminate", "b", "normal")
            # Confirms are not held up by b; its death is reported.
            await a.confirmed_broadcast("one")
            await a.confirmed_broadcast("two")
            await events.expect("members_changed", "a", [], [b.id])
            assert await a.group_members() == [a.id]


async def test_a_callback_exception_propagates_out_of_the_block(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    class Crashing(Reporter):
        def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:
            super().handle_msg(args, sender, msg)
            if msg == "crash":
                raise RuntimeError("callback failed")

    ids: list[trio_gm.MemberId] = []

    async def crash(node: trio_gm.Node, a: trio_gm.Member) -> None:
        async with node.open_member(GROUP, Crashing(events), "b") as b:
            ids.append(b.id)
            await a.broadcast("crash")
            await trio.sleep_forever()

    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            # As itself, not in an ExceptionGroup; noted with who raised it.
            with pytest.raises(RuntimeError, match="callback failed") as info:
                await crash(node, a)
            assert info.value.__notes__ == [
                f"raised by Crashing.handle_msg, a callback of member {ids[0]} of group {GROUP!r}"
            ]
            terminated = await events.receive(lambda e: e[:2] == ("terminate", "b"))
            assert isinstance(terminated[2], RuntimeError)
            await a.confirmed_broadcast("a carries on")


class Switching(Reporter):
    """Becomes ``Second`` on "switch"; ``Second`` records under "b2"."""

    def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> Any:
        super().handle_msg(args, sender, msg)
        if msg == "switch" and args == "b":
            return trio_gm.Become(Reporter(self.events), "b2")
        if msg == "halt" and args == "b":
            return trio_gm.Stop("halted")
        return None


async def test_become_in_a_batch_applies_to_the_rest_of_it(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            async with node.open_member(GROUP, Switching(events), "b") as b:
                for msg in ["m1", "switch", "m2", "m3"]:
                    await a.broadcast(msg)  # one batch: flushed together
                await a.confirmed_broadcast("end")
                got = [(e[1], e[3]) for e in events.log if e[0] == "msg" and e[1] != "a"]
                assert got == [
                    ("b", "m1"),
                    ("b", "switch"),
                    ("b2", "m2"),
                    ("b2", "m3"),
                    ("b2", "end"),
                ]
                info = await b.info()
                assert isinstance(info.callbacks, Reporter)
                assert not isinstance(info.callbacks, Switching)


async def test_stop_in_a_batch_aborts_the_rest_of_it(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            async with node.open_member(GROUP, Switching(events), "b"):
                for msg in ["m1", "halt", "m2"]:
                    await a.broadcast(msg)
                await events.expect("terminate", "b", "halted")
                got = [e[3] for e in events.log if e[0] == "msg" and e[1] == "b"]
                assert got == ["m1", "halt"]
                await a.confirmed_broadcast("a carries on")


async def test_handle_msg_for_own_messages_at_broadcast(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            await a.broadcast("alone")
            await events.expect("msg", "a", a.id, "alone")


async def test_flow_control_waits_for_room(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    blocker = Blocker(events, "b")
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a", max_in_flight=3) as a:
            async with node.open_member(GROUP, blocker, "b"):
                await a.broadcast("block")
                await events.expect("msg", "b", a.id, "block")
                # b passed "block" on before it stuck, so it went round: a
                # has nothing in flight once it has seen it back.
                await trio.testing.wait_all_tasks_blocked()
                for msg in ("2", "3", "4"):
                    await a.broadcast(msg)
                sent: list[str] = []

                async def fifth() -> None:
                    await a.broadcast("5")
                    sent.append("5")

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(fifth)
                    await trio.testing.wait_all_tasks_blocked()
                    assert sent == []  # three of a's messages are unacknowledged
                    assert (await a.statistics()).in_flight == 3
                    blocker.release()
                assert sent == ["5"]
                await a.confirmed_broadcast("end")
                await events.expect("msg", "b", a.id, "5")


async def test_broadcast_from_own_callback_never_waits(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    members: list[trio_gm.Member] = []

    class Echo(Reporter):
        async def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:  # type: ignore[override]
            super().handle_msg(args, sender, msg)
            if isinstance(msg, int) and msg < 10 and args == "a":
                await members[0].broadcast(msg + 1)  # over max_in_flight: must not wait

    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Echo(events), "a", max_in_flight=1) as a:
            members.append(a)
            async with node.open_member(GROUP, Reporter(events), "b"):
                await a.broadcast(0)
                for n in range(11):
                    await events.expect("msg", "b", a.id, n)


async def test_confirmed_broadcast_from_own_callback_is_refused(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    members: list[trio_gm.Member] = []
    errors: list[BaseException] = []

    class Deadlocker(Reporter):
        async def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:  # type: ignore[override]
            super().handle_msg(args, sender, msg)
            if msg == "go":
                try:
                    await members[0].confirmed_broadcast("inner")
                except trio_gm.WouldDeadlock as exc:
                    errors.append(exc)

    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Deadlocker(events), "a") as a:
            members.append(a)
            await a.confirmed_broadcast("go")
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)  # what it was before: still caught as one
    assert "would deadlock" in str(errors[0])


async def test_info_group_members_and_validate_members(
    gm_store: trio_gm.GroupStore, events: Events
) -> None:
    callbacks = Reporter(events)
    async with trio_gm.open_node(gm_store) as node:
        async with node.open_member(GROUP, callbacks, "a") as a:
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                info = await a.info()
                assert info == trio_gm.GroupInfo(GROUP, callbacks, sorted([a.id, b.id]))
                assert await b.group_members() == sorted([a.id, b.id])
                events.log.clear()
                await a.validate_members([a.id, b.id])
                await trio.testing.wait_all_tasks_blocked()
                assert events.log == []  # no difference: no callback
                ghost = trio_gm.MemberId("ghost", 1)
                await a.validate_members([a.id, ghost])
                await events.expect("members_changed", "a", [b.id], [ghost])
                stats = await a.statistics()
                assert stats.ring_size == 2
                with pytest.raises(attrs.exceptions.FrozenInstanceError):
                    stats.ring_size = 3  # type: ignore[misc]


async def test_calls_on_a_stopped_member_raise(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            await a.leave()
            await events.expect("terminate", "a", "normal")
            for call in (
                a.broadcast("x"),
                a.confirmed_broadcast("x"),
                a.info(),
                a.group_members(),
                a.validate_members([]),
                a.statistics(),
            ):
                with pytest.raises(trio_gm.MemberStopped, match=str(a.id)):
                    await call


async def test_kill_runs_no_terminate_and_the_others_see_a_death(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                b.kill()
                await a.confirmed_broadcast("1")
                await events.expect("members_changed", "a", [], [b.id])
    assert not [e for e in events.log if e[:2] == ("terminate", "b")]


async def test_async_callbacks(sqlite_store: trio_gm.GroupStore, events: Events) -> None:
    class AsyncReporter(Reporter):
        async def joined(self, args: Any, members: list[trio_gm.MemberId]) -> None:  # type: ignore[override]
            await trio.lowlevel.checkpoint()
            super().joined(args, members)

        async def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:  # type: ignore[override]
            await trio.lowlevel.checkpoint()
            super().handle_msg(args, sender, msg)

        async def handle_terminate(self, args: Any, reason: Any) -> None:  # type: ignore[override]
            await trio.lowlevel.checkpoint()
            super().handle_terminate(args, reason)

    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, AsyncReporter(events), "a") as a:
            await events.expect("joined", "a", [a.id])
            async with node.open_member(GROUP, AsyncReporter(events), "b"):
                for i in range(20):
                    await a.broadcast(i)
                await a.confirmed_broadcast("end")
                # Every member has "end"; an async handle_msg may still be
                # running (a member passes a batch on before delivering it).
                for expected in [*range(20), "end"]:
                    got = await events.receive(lambda e: e[:2] == ("msg", "b"))
                    assert got[3] == expected
    await events.expect("terminate", "a", "normal")


@pytest.mark.parametrize(
    ("group", "callbacks", "kwargs", "error", "match"),
    [
        ("", Reporter(Events()), {}, ValueError, "non-empty str, got ''"),
        (42, Reporter(Events()), {}, ValueError, "non-empty str, got 42"),
        ("g", object(), {}, TypeError, "lack joined, members_changed, handle_msg"),
        ("g", Reporter(Events()), {"max_in_flight": 0}, ValueError, "int >= 1, got 0"),
        ("g", Reporter(Events()), {"max_in_flight": "9"}, TypeError, "int >= 1, got '9'"),
    ],
)
async def test_bad_arguments_to_open_member(
    sqlite_store: trio_gm.GroupStore,
    group: Any,
    callbacks: Any,
    kwargs: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    async with trio_gm.open_node(sqlite_store) as node:
        with pytest.raises(error, match=match):
            async with node.open_member(group, callbacks, **kwargs):
                pytest.fail("must not join")  # pragma: no cover


async def test_bad_size_hint(sqlite_store: trio_gm.GroupStore, events: Events) -> None:
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            with pytest.raises(ValueError, match="size_hint must be an int >= 0, got -1"):
                await a.broadcast("x", size_hint=-1)


async def test_open_node_needs_a_store() -> None:
    with pytest.raises(TypeError, match="needs a GroupStore"):
        async with trio_gm.open_node("sqlite://"):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_broadcasters_waiting_for_room_all_wake(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """Several tasks wait on one member's flow control: room wakes them all,
    and a kill wakes them with MemberStopped instead of leaving them hung."""
    blocker = Blocker(events, "b")
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a", max_in_flight=1) as a:
            async with node.open_member(GROUP, blocker, "b"):
                await a.broadcast("block")
                await events.expect("msg", "b", a.id, "block")
                await trio.testing.wait_all_tasks_blocked()
                await a.broadcast("fills the window")
                outcomes: list[str] = []

                async def waiter(name: str) -> None:
                    try:
                        await a.broadcast(name)
                        outcomes.append(f"{name} sent")
                    except trio_gm.MemberStopped:
                        outcomes.append(f"{name} stopped")

                async with trio.open_nursery() as nursery:
                    for name in ("w1", "w2", "w3"):
                        nursery.start_soon(waiter, name)
                    await trio.testing.wait_all_tasks_blocked()
                    assert outcomes == []
                    a.kill()
                assert sorted(outcomes) == ["w1 stopped", "w2 stopped", "w3 stopped"]
                blocker.release()
