"""The gen_server2 port: every behaviour the runtime promises, one by one."""

from __future__ import annotations

from typing import Any

import attrs
import cattrs
import pytest
import trio
import trio.testing

from trio_gm import ActorId, ActorStopped, CallTimeout, NoSuchActor
from trio_gm.actor import (
    HIBERNATE,
    TIMEOUT,
    Actor,
    ActorContext,
    ActorHandle,
    ActorNode,
    BecomeActor,
    Down,
    From,
    NoReply,
    Reply,
    StopActor,
)


class Recorder(Actor):
    """Records every message and how it stopped; replies ``("ok", request)``."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.terminated: list[Any] = []
        self.pending: list[From] = []

    def handle_call(self, request: Any, from_: From) -> Any:
        self.seen.append(("call", request))
        if request == "defer":
            self.pending.append(from_)
            return NoReply()
        if request == "crash":
            raise RuntimeError("boom in call")
        if request == "stop":
            return StopActor("asked", reply="stopping")
        return Reply(("ok", request))

    def handle_cast(self, msg: Any) -> Any:
        self.seen.append(("cast", msg))
        if msg == "crash":
            raise RuntimeError("boom in cast")
        if isinstance(msg, tuple) and msg[0] == "stop":
            return StopActor(msg[1])
        return None

    def handle_info(self, msg: Any) -> Any:
        self.seen.append(("info", msg))
        return None

    def terminate(self, reason: Any) -> None:
        self.terminated.append(reason)


# -- lifetimes ---------------------------------------------------------------


async def test_open_actor_block_exit_stops_with_normal() -> None:
    node = ActorNode()
    rec = Recorder()
    async with node.open_actor(rec) as handle:
        assert handle.alive
        assert await handle.call("hello") == ("ok", "hello")
    assert not handle.alive
    assert rec.terminated == ["normal"]
    assert node.statistics().actors == 0


async def test_start_in_a_nursery_lives_until_stopped() -> None:
    node = ActorNode()
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        handle = await node.start_actor(nursery, rec)
        handle.cast("one")
        assert await handle.call("two") == ("ok", "two")
        await handle.stop("bye")
        assert not handle.alive
    assert rec.seen == [("cast", "one"), ("call", "two")]
    assert rec.terminated == ["bye"]


async def test_init_runs_in_the_actor_before_any_message() -> None:
    order: list[str] = []

    class Early(Actor):
        async def init(self, ctx: ActorContext) -> None:
            order.append(f"init {ctx.id == handle_id[0] if handle_id else 'unknown'}")
            self.ctx = ctx

        def handle_call(self, request: Any, from_: From) -> Reply:
            order.append("call")
            return Reply(self.ctx.id)

    handle_id: list[ActorId] = []
    node = ActorNode()
    async with node.open_actor(Early()) as handle:
        assert await handle.call("who") == handle.id
    assert order == ["init unknown", "call"]


async def test_init_failure_raises_from_start_and_leaves_nothing_registered() -> None:
    class Broken(Actor):
        def init(self, ctx: ActorContext) -> None:
            raise ValueError("bad config")

    node = ActorNode()
    with pytest.raises(ValueError, match="bad config"):
        async with node.open_actor(Broken()):
            pytest.fail("the block must not run")  # pragma: no cover
    assert node.statistics().actors == 0


# -- ids ---------------------------------------------------------------------


def test_ids_are_plain_ordered_serialisable_values() -> None:
    node = ActorNode(name="node-a")
    a, b = node.new_id(), node.new_id()
    assert a != b
    assert a < b
    assert {a: 1}[ActorId("node-a", a.serial)] == 1
    assert str(a) == f"<node-a.{a.serial}>"
    converter = cattrs.Converter()
    assert converter.structure(converter.unstructure(a), ActorId) == a
    assert attrs.has(ActorId)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.serial = 9  # type: ignore[misc]


async def test_messages_to_an_unknown_id_are_dropped_and_counted() -> None:
    node = ActorNode()
    ghost = node.new_id()
    node.cast(ghost, "x")
    node.send(ghost, "y")
    assert node.statistics().dropped == 2
    with pytest.raises(NoSuchActor, match=str(ghost)):
        await node.call(ghost, "anyone?")


# -- calls -------------------------------------------------------------------


async def test_call_timeout_is_a_clear_error(autojump_clock: trio.testing.MockClock) -> None:
    node = ActorNode()
    async with node.open_actor(Recorder()) as handle:
        start = trio.current_time()
        with pytest.raises(CallTimeout, match=r"not answered within 2\.5s") as info:
            await handle.call("defer", timeout=2.5)
        assert trio.current_time() - start == pytest.approx(2.5)
        assert isinstance(info.value, TimeoutError)


async def test_deferred_reply_from_a_later_message() -> None:
    class Deferring(Actor):
        def __init__(self) -> None:
            self.waiting: From | None = None

        def init(self, ctx: ActorContext) -> None:
            self.ctx = ctx

        def handle_call(self, request: Any, from_: From) -> Any:
            self.waiting = from_
            return NoReply()

        def handle_cast(self, msg: Any) -> None:
            assert self.waiting is not None
            self.ctx.reply(self.waiting, f"answered by {msg}")

    node = ActorNode()
    async with node.open_actor(Deferring()) as handle, trio.open_nursery() as nursery:
        results: list[Any] = []

        async def caller() -> None:
            results.append(await handle.call("question"))

        nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        handle.cast("the cast")
    assert results == ["answered by the cast"]


async def test_late_reply_after_timeout_is_discarded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = ActorNode()
    rec = Recorder()
    async with node.open_actor(rec) as handle:
        with pytest.raises(CallTimeout):
            await handle.call("defer", timeout=1)
        node.reply(rec.pending[0], "too late")
        assert node.statistics().late_replies == 1
        assert node.statistics().pending_calls == 0
        assert await handle.call("still alive") == ("ok", "still alive")


async def test_caller_learns_when_the_actor_stops_before_replying() -> None:
    node = ActorNode()
    async with trio.open_nursery() as nursery:
        handle = await node.start_actor(nursery, Recorder())
        outcome: list[BaseException] = []

        async def caller() -> None:
            try:
                await handle.call("defer")
            except ActorStopped as exc:
                outcome.append(exc)

        nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        await handle.stop("going away")
    assert len(outcome) == 1
    assert "going away" in str(outcome[0])


async def test_stop_with_reply_answers_the_call_then_stops() -> None:
    node = ActorNode()
    rec = Recorder()
    async with node.open_actor(rec) as handle:
        assert await handle.call("stop") == "stopping"
        await trio.testing.wait_all_tasks_blocked()
        assert not handle.alive
    assert rec.terminated == ["asked"]


async def test_handle_call_must_say_what_it_does_with_the_call() -> None:
    class Sloppy(Actor):
        def handle_call(self, request: Any, from_: From) -> Any:
            return "forgot to wrap"

    node = ActorNode()

    async def call_it() -> None:
        async with node.open_actor(Sloppy()) as handle:
            with pytest.raises(ActorStopped):
                await handle.call("x")

    with pytest.raises(TypeError, match="must return Reply"):
        await call_it()


@pytest.mark.parametrize("bad", [-1, "soon", float("nan"), True])
def test_bad_timeouts_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="must be None, HIBERNATE or a number"):
        NoReply(timeout=bad)


async def test_bad_call_timeout_is_refused() -> None:
    node = ActorNode()
    async with node.open_actor(Recorder()) as handle:
        with pytest.raises(ValueError, match="positive number of seconds, got 0"):
            await handle.call("x", timeout=0)


# -- the priority mailbox -------------------------------------------------------


class Prioritised(Actor):
    """Blocks on its first message until released, so the others queue up."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.seen: list[Any] = []
        self.urgent_mode = False

    def prioritise_cast(self, msg: Any) -> int:
        if isinstance(msg, tuple):
            return int(msg[0])
        return 0

    def prioritise_info(self, msg: Any) -> int:
        # Evaluated against the current state: "mode" messages only jump the
        # queue once the actor is in urgent mode.
        return 5 if self.urgent_mode and msg == "mode" else 0

    def prioritise_call(self, request: Any, from_: From) -> int:
        return 7

    async def handle_cast(self, msg: Any) -> None:
        if msg == "block":
            await self.release.wait()
            return
        if msg == "urgent":
            self.urgent_mode = True
        self.seen.append(msg)

    def handle_info(self, msg: Any) -> None:
        self.seen.append(msg)

    def handle_call(self, request: Any, from_: From) -> Reply:
        self.seen.append(request)
        return Reply(None)


async def test_higher_priority_first_fifo_within_a_priority() -> None:
    node = ActorNode()
    actor = Prioritised()
    async with node.open_actor(actor) as handle, trio.open_nursery() as nursery:
        handle.cast("block")
        await trio.testing.wait_all_tasks_blocked()
        for msg in [(0, "a"), (2, "b"), (-1, "c"), (2, "d"), (0, "e"), (1, "f")]:
            handle.cast(msg)
        nursery.start_soon(handle.call, "the call")
        await trio.testing.wait_all_tasks_blocked()
        assert handle.statistics().mailbox_length == 7
        actor.release.set()
    assert actor.seen == ["the call", (2, "b"), (2, "d"), (1, "f"), (0, "a"), (0, "e"), (-1, "c")]


async def test_priority_is_decided_against_the_current_state() -> None:
    node = ActorNode()
    actor = Prioritised()
    async with node.open_actor(actor) as handle:
        handle.cast("block")
        await trio.testing.wait_all_tasks_blocked()
        handle.send("plain")
        handle.send("mode")  # queued while not urgent: priority 0
        actor.release.set()
        await trio.testing.wait_all_tasks_blocked()
        handle.cast("urgent")
        handle.cast("block")
        actor.release = trio.Event()
        await trio.testing.wait_all_tasks_blocked()
        handle.send("plain")
        handle.send("mode")  # now urgent: jumps the earlier "plain"
        actor.release.set()
    assert actor.seen == ["plain", "mode", "urgent", "mode", "plain"]


# -- the timeout idiom and idling ------------------------------------------------


class TimeoutUser(Actor):
    def __init__(self, timeout: Any) -> None:
        self.timeout = timeout
        self.seen: list[tuple[float, Any]] = []
        self.idled = 0

    def handle_cast(self, msg: Any) -> NoReply:
        self.seen.append((trio.current_time(), msg))
        return NoReply(timeout=self.timeout if msg == "arm" else None)

    def handle_info(self, msg: Any) -> None:
        self.seen.append((trio.current_time(), msg))

    def idle(self) -> None:
        self.idled += 1


async def test_timeout_zero_fires_once_the_mailbox_is_empty() -> None:
    node = ActorNode()
    actor = TimeoutUser(0)
    async with node.open_actor(actor) as handle:
        handle.cast("arm")
        handle.cast("arm")
        handle.cast("third")
        await trio.testing.wait_all_tasks_blocked()
        # The second "arm" is cancelled by "third": no Timeout after it.
        assert [m for _, m in actor.seen] == ["arm", "arm", "third"]
        handle.cast("arm")
        await trio.testing.wait_all_tasks_blocked()
    assert [m for _, m in actor.seen] == ["arm", "arm", "third", "arm", TIMEOUT]


async def test_positive_timeout_fires_after_silence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = ActorNode()
    actor = TimeoutUser(3.0)
    async with node.open_actor(actor) as handle:
        t0 = trio.current_time()
        handle.cast("arm")
        await trio.sleep(1)
        handle.cast("arm")  # re-arms: the timeout counts from here
        await trio.sleep(10)
    times = [(t - t0, m) for t, m in actor.seen]
    assert times == [(0, "arm"), (1, "arm"), (4, TIMEOUT)]


async def test_a_message_cancels_a_positive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = ActorNode()
    actor = TimeoutUser(3.0)
    async with node.open_actor(actor) as handle:
        handle.cast("arm")
        await trio.sleep(1)
        handle.cast("disarm")
        await trio.sleep(10)
    assert [m for _, m in actor.seen] == ["arm", "disarm"]


async def test_hibernate_runs_the_idle_hook_when_the_mailbox_empties() -> None:
    node = ActorNode()
    actor = TimeoutUser(HIBERNATE)
    async with node.open_actor(actor) as handle:
        handle.cast("arm")
        handle.cast("arm")
        await trio.testing.wait_all_tasks_blocked()
        assert actor.idled == 1
        handle.cast("other")
        await trio.testing.wait_all_tasks_blocked()
        assert actor.idled == 1


# -- timers ------------------------------------------------------------------


class TimerUser(Actor):
    def __init__(self) -> None:
        self.seen: list[tuple[float, Any]] = []
        self.refs: dict[str, Any] = {}
        self.cancelled: list[bool] = []

    def init(self, ctx: ActorContext) -> None:
        self.ctx = ctx

    def handle_cast(self, msg: Any) -> None:
        match msg:
            case ("after", delay, name):
                self.refs[name] = self.ctx.send_after(delay, name)
            case ("cancel", name):
                self.cancelled.append(self.ctx.cancel_timer(self.refs[name]))

    def handle_info(self, msg: Any) -> None:
        self.seen.append((trio.current_time(), msg))


async def test_send_after_delivers_after_the_delay_and_can_be_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = ActorNode()
    actor = TimerUser()
    async with node.open_actor(actor) as handle:
        t0 = trio.current_time()
        handle.cast(("after", 2.0, "kept"))
        handle.cast(("after", 1.0, "dropped"))
        handle.cast(("after", 0.5, "early"))
        await trio.sleep(0.75)
        handle.cast(("cancel", "dropped"))
        await trio.sleep(5)
        handle.cast(("cancel", "kept"))  # already fired
        await trio.testing.wait_all_tasks_blocked()
        assert handle.statistics().timers == 0
    assert [(t - t0, m) for t, m in actor.seen] == [(0.5, "early"), (2.0, "kept")]
    assert actor.cancelled == [True, False]


async def test_bad_send_after_delay_is_refused() -> None:
    node = ActorNode()

    async def ask_for_a_bad_timer() -> None:
        async with node.open_actor(TimerUser()) as bad:
            bad.cast(("after", -1, "x"))
            await trio.sleep_forever()

    async with node.open_actor(TimerUser()) as handle:
        with pytest.raises(ValueError, match="finite number >= 0, got -1"):
            await ask_for_a_bad_timer()
        assert handle.alive


# -- monitors ----------------------------------------------------------------


class Watcher(Actor):
    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.refs: list[Any] = []

    def init(self, ctx: ActorContext) -> None:
        self.ctx = ctx

    def handle_cast(self, msg: Any) -> None:
        match msg:
            case ("monitor", target):
                self.refs.append(self.ctx.monitor(target))
            case ("demonitor", index):
                self.ctx.demonitor(self.refs[index])
            case _:
                self.seen.append(msg)

    def handle_info(self, msg: Any) -> None:
        if isinstance(msg, Down):
            self.seen.append(("down", msg.target, msg.reason))
        else:
            self.seen.append(msg)


async def _watch(node: ActorNode, watcher: Any, target: ActorId) -> None:
    watcher.cast(("monitor", target))
    await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize("how", ["stop", "normal exit", "crash", "kill"])
async def test_monitor_reports_every_kind_of_stop(how: str) -> None:
    node = ActorNode()
    watcher = Watcher()
    target = Recorder()
    async with node.open_actor(watcher) as w:
        with pytest.raises(RuntimeError) if how == "crash" else _nothing():
            async with node.open_actor(target) as t:
                await _watch(node, w, t.id)
                if how == "stop":
                    t.cast(("stop", "custom"))
                elif how == "crash":
                    t.cast("crash")
                elif how == "kill":
                    t.kill()
                await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
    reason = watcher.seen[0][2]
    expected = {"stop": "custom", "normal exit": "normal", "kill": "killed"}
    if how == "crash":
        assert isinstance(reason, RuntimeError)
        assert target.terminated == [reason]
    else:
        assert reason == expected[how]
        assert target.terminated == ([] if how == "kill" else [expected[how]])
    assert watcher.seen == [("down", t.id, reason)]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_monitoring_a_missing_actor_reports_noproc_at_once() -> None:
    node = ActorNode()
    watcher = Watcher()
    ghost = node.new_id()
    async with node.open_actor(watcher) as w:
        await _watch(node, w, ghost)
    assert watcher.seen == [("down", ghost, "noproc")]


async def test_demonitor_before_the_death_means_no_down() -> None:
    node = ActorNode()
    watcher = Watcher()
    async with node.open_actor(watcher) as w:
        async with node.open_actor(Recorder()) as t:
            await _watch(node, w, t.id)
            await _watch(node, w, t.id)
            w.cast(("demonitor", 0))
            await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
    assert watcher.seen == [("down", t.id, "normal")]
    assert watcher.refs[1] != watcher.refs[0]


async def test_queued_down_is_dropped_when_demonitored_before_it_is_handled() -> None:
    class SlowWatcher(Watcher):
        def __init__(self) -> None:
            super().__init__()
            self.release = trio.Event()

        async def handle_cast(self, msg: Any) -> None:
            if msg == "block":
                await self.release.wait()
            else:
                super().handle_cast(msg)

    node = ActorNode()
    watcher = SlowWatcher()
    async with node.open_actor(watcher) as w:
        async with node.open_actor(Recorder()) as t:
            await _watch(node, w, t.id)
            w.cast("block")
            await trio.testing.wait_all_tasks_blocked()
        # t has stopped: its Down is queued behind "block"; so is demonitor.
        w.send("after-down")
        # demonitor through the watcher's context, as its own handler would
        watcher.ctx.demonitor(watcher.refs[0])
        watcher.release.set()
    assert watcher.seen == ["after-down"]


async def test_down_never_overtakes_what_the_target_sent_before_dying() -> None:
    class Sender(Actor):
        def __init__(self, to: ActorId) -> None:
            self.to = to

        def init(self, ctx: ActorContext) -> None:
            self.ctx = ctx

        def handle_cast(self, msg: Any) -> StopActor:
            for i in range(100):
                self.ctx.cast(self.to, ("from sender", i))
            return StopActor("done")

    node = ActorNode()
    watcher = Watcher()
    async with node.open_actor(watcher) as w, node.open_actor(Sender(w.id)) as s:
        await _watch(node, w, s.id)
        s.cast("go")
        await trio.testing.wait_all_tasks_blocked()
    assert watcher.seen == [("from sender", i) for i in range(100)] + [("down", s.id, "done")]


# -- become ------------------------------------------------------------------


async def test_become_swaps_the_callbacks_for_later_messages() -> None:
    log: list[str] = []

    class Second(Actor):
        def handle_cast(self, msg: Any) -> None:
            log.append(f"second {msg}")

        def handle_call(self, request: Any, from_: From) -> Reply:
            return Reply("second")

        def terminate(self, reason: Any) -> None:
            log.append(f"second terminate {reason}")

    class First(Actor):
        def handle_cast(self, msg: Any) -> BecomeActor | None:
            log.append(f"first {msg}")
            return BecomeActor(Second()) if msg == "swap" else None

        def handle_call(self, request: Any, from_: From) -> BecomeActor:
            return BecomeActor(Second(), reply="swapped by call")

        def terminate(self, reason: Any) -> None:
            log.append("first terminate")

    node = ActorNode()
    async with node.open_actor(First()) as h:
        h.cast("a")
        h.cast("swap")
        h.cast("b")
        assert await h.call("?") == "second"
        assert h.statistics().behaviour == "Second"
    assert log == ["first a", "first swap", "second b", "second terminate normal"]

    async with node.open_actor(First()) as h2:
        assert await h2.call("swap") == "swapped by call"
        assert await h2.call("?") == "second"


# -- stopping -------------------------------------------------------------------


async def test_crash_propagates_out_of_the_owners_block_after_terminate() -> None:
    node = ActorNode()
    rec = Recorder()

    async def crash() -> None:
        async with node.open_actor(rec) as handle:
            handle.cast("crash")
            await trio.sleep_forever()

    with pytest.raises(RuntimeError, match="boom in cast"):
        await crash()
    assert len(rec.terminated) == 1
    assert isinstance(rec.terminated[0], RuntimeError)


async def test_a_handler_that_kills_its_own_actor_ends_it_there() -> None:
    """kill() from the actor's own task does not return; nothing after it runs."""
    node = ActorNode()
    handles: list[ActorHandle] = []

    class Suicidal(Recorder):
        def handle_cast(self, msg: Any) -> Any:
            if msg != "die":
                return super().handle_cast(msg)
            try:
                handles[0].kill()
                self.seen.append("after kill")  # never
            finally:
                self.seen.append("finally")
            return None

    watcher, target = Watcher(), Suicidal()
    async with node.open_actor(watcher) as w, node.open_actor(target) as t:
        handles.append(t)
        await _watch(node, w, t.id)
        for msg in ["one", "die", "two"]:
            t.cast(msg)  # queued together: "two" is never handled
        await trio.testing.wait_all_tasks_blocked()
        assert not t.alive
    assert target.seen == [("cast", "one"), "finally"]
    assert target.terminated == []
    assert watcher.seen == [("down", t.id, "killed")]


async def test_cancelling_the_owner_stops_with_shutdown() -> None:
    node = ActorNode()
    rec = Recorder()
    with trio.move_on_after(0) as scope:
        async with node.open_actor(rec):
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert rec.terminated == ["shutdown"]
    assert node.statistics().actors == 0


async def test_kill_ends_at_once_without_terminate() -> None:
    node = ActorNode()
    rec = Recorder()
    async with node.open_actor(rec) as handle:
        handle.cast("queued before kill")
        handle.kill()
        await trio.testing.wait_all_tasks_blocked()
        assert not handle.alive
        handle.cast("after")  # dropped, no error
    assert rec.terminated == []
    assert ("cast", "after") not in rec.seen


async def test_async_handlers_are_awaited_in_order() -> None:
    class Async(Actor):
        def __init__(self) -> None:
            self.seen: list[int] = []

        async def handle_cast(self, msg: int) -> None:
            await trio.lowlevel.checkpoint()
            self.seen.append(msg)

        async def handle_call(self, request: Any, from_: From) -> Reply:
            await trio.lowlevel.checkpoint()
            return Reply(list(self.seen))

    node = ActorNode()
    async with node.open_actor(Async()) as h:
        for i in range(10):
            h.cast(i)
        assert await h.call("all") == list(range(10))


# -- never blocking, statistics -------------------------------------------------------


async def test_sends_never_block_in_a_ring_of_actors() -> None:
    """Each actor forwards every message it gets to the next: with bounded
    buffers this ring deadlocks as soon as every buffer is full."""

    class Hop(Actor):
        def __init__(self, count: list[int]) -> None:
            self.next: ActorId | None = None
            self.count = count

        def init(self, ctx: ActorContext) -> None:
            self.ctx = ctx

        def handle_call(self, request: ActorId, from_: From) -> Reply:
            self.next = request
            return Reply(None)

        def handle_cast(self, msg: int) -> None:
            self.count[0] += 1
            if msg > 0:
                assert self.next is not None
                self.ctx.cast(self.next, msg - 1)

    node = ActorNode()
    count = [0]
    async with trio.open_nursery() as nursery:
        handles = [await node.start_actor(nursery, Hop(count)) for _ in range(5)]
        for a, b in zip(handles, handles[1:] + handles[:1], strict=True):
            await a.call(b.id)
        for h in handles:
            for _ in range(2000):
                h.cast(50)  # 10,000 messages each hopping 50 times
        await trio.testing.wait_all_tasks_blocked()
        assert count[0] == 10_000 * 51
        for h in handles:
            await h.stop()


async def test_statistics_is_a_frozen_snapshot() -> None:
    node = ActorNode()
    actor = Prioritised()
    async with node.open_actor(actor) as handle:
        handle.cast("block")
        await trio.testing.wait_all_tasks_blocked()
        handle.cast("x")
        handle.cast("y")
        stats = handle.statistics()
        actor.release.set()
        await trio.testing.wait_all_tasks_blocked()
        later = handle.statistics()
    assert (stats.mailbox_length, stats.messages_handled) == (2, 1)
    assert (later.mailbox_length, later.messages_handled) == (0, 3)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.mailbox_length = 0  # type: ignore[misc]
    with pytest.raises(NoSuchActor):
        handle.statistics()


async def test_a_killed_actor_handles_nothing_already_queued() -> None:
    node = ActorNode()
    rec = Recorder()
    async with node.open_actor(rec) as handle:
        for i in range(5):
            handle.cast(i)
        handle.kill()  # before the actor ran at all
        await trio.testing.wait_all_tasks_blocked()
    assert rec.seen == []
    assert rec.terminated == []
