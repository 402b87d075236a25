"""The nemesis soak (trio_gm.testing.nemesis): a short run, and its checker on hand-made logs.

The short run needs simulated hosts (root) and PostgreSQL's binaries, and
takes about a minute. The checker tests feed :class:`NemesisChecker` logs
written by hand, one broken guarantee each, to show that it reports each
kind; they run anywhere.
"""

from __future__ import annotations

import io
import math
import signal
from typing import Any

import pytest

from tests.conftest import MakeNetwork
from trio_gm.cli import main
from trio_gm.testing.nemesis import (
    KINDS,
    Fault,
    NemesisChecker,
    NemesisConfig,
    Progress,
    Violation,
    print_summary,
    run_nemesis,
    unavailable_reason,
)

# ------------------------------------------------------------- a short run


@pytest.fixture
def nemesis_available(simulated_network: MakeNetwork) -> None:
    """Skip (or fail, as the simulated_network fixture does) where the soak cannot run."""
    why_not = unavailable_reason()
    if why_not is not None:
        pytest.skip(why_not)


@pytest.mark.slow
async def test_a_short_nemesis_soak_breaks_no_guarantee(nemesis_available: None) -> None:
    config = NemesisConfig(
        hosts=5,
        members_per_host=2,
        seconds=40,
        seed=12,
        longest_fault=5.0,
        quiet=(0.5, 2.0),
    )
    out = io.StringIO()
    report = await run_nemesis(config, progress=Progress(out, tty=False, every=5.0))
    summary = io.StringIO()
    status = print_summary(report, summary)
    assert report.violations == [], summary.getvalue()
    assert (status, report.violation_count) == (0, 0)
    # Every kind of action happened, the members broadcast and were checked,
    # and some member outlived the chaos untouched.
    assert {kind: report.actions[kind] > 0 for kind in KINDS} == dict.fromkeys(KINDS, True)
    assert report.killed > 0
    assert report.paused > 0
    assert report.deliveries > 0
    assert report.confirmed_checks > 0
    assert report.survivors > 0
    assert "nemesis actions" in out.getvalue()
    assert "violations                    0" in summary.getvalue()
    assert report.log_dir is None  # a run without violations leaves no logs behind


def test_soak_hosts_refuses_what_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in [
        (["soak", "--nemesis", "kills"], "--nemesis, --members-per-host and --log-dir go with"),
        (["soak", "--hosts", "3", "--store", "sqlite://"], "--store cannot go with --hosts"),
        (["soak", "--hosts", "3", "--members", "4"], "--members cannot go with --hosts"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err
        assert len(err.strip().splitlines()) == 1
        assert "Traceback" not in err
    for argv, expected in [
        (["soak", "--hosts", "2"], "expected at least 3, got 2"),
        (["soak", "--hosts", "3", "--nemesis", "kills,floods"], "got 'kills,floods'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err


# ------------------------------------------------------- the checker's logs


class Log:
    """Hand-made logs: member processes and what each printed, at times one apart."""

    def __init__(self) -> None:
        self.checker = NemesisChecker(margin=2.0)
        self.now = 0.0
        self.ids: dict[str, str] = {}

    def at(self) -> float:
        self.now += 1.0
        return self.now

    def start(self, name: str, host: str) -> None:
        """Launch ``name`` on ``host``; it joins, seeing the members started before it."""
        member_id = f"<10.0.0.1:{len(self.ids) + 1000}#{name}.1>"
        self.checker.launched(name, host, self.at())
        self.event(name, "joined", members=[*self.ids.values(), member_id])
        for other in self.ids:
            self.event(other, "members_changed", births=[member_id], deaths=[])
        self.ids[name] = member_id
        self.event(name, "ready", id=member_id, address="10.0.0.1:1")

    def numbered(self, name: str) -> None:
        self.checker.began_numbered(name, self.at())

    def event(self, name: str, kind: str, **fields: Any) -> None:
        self.checker.event(name, {"event": kind, **fields}, self.at())

    def deliver(self, receiver: str, sender: str, *numbers: int) -> None:
        for number in numbers:
            self.event(receiver, "msg", sender=self.ids[sender], msg=number)

    def confirmed(self, sender: str, number: int) -> None:
        """``sender``'s confirmed broadcast of ``number`` returned (it began just now)."""
        self.event(sender, "confirmed", msg=number, sent=self.now + 0.5)

    def death(self, receiver: str, dead: str) -> None:
        self.event(receiver, "members_changed", births=[], deaths=[self.ids[dead]])

    def killed(self, name: str) -> None:
        now = self.at()
        self.checker.fault(Fault("kills", f"SIGKILL {name}", now, now, members=frozenset([name])))
        self.checker.exited(name, -signal.SIGKILL, self.at())

    def final(self, *names: str, last: int) -> None:
        """Each of ``names`` ends with its final confirmed ``last``, delivered to all of them."""
        for sender in names:
            for receiver in names:
                self.deliver(receiver, sender, last)
            self.confirmed(sender, last)
            self.event(sender, "numbered_end", last=last)

    def finish(self) -> list[Violation]:
        return self.checker.finish(self.at())


def two_members_sending(log: Log, upto: int = 2) -> None:
    """p and q on hosts a and b, each sending 0..upto to both, the odd ones confirmed."""
    log.start("p", "a")
    log.start("q", "b")
    log.numbered("p")
    log.numbered("q")
    for number in range(upto + 1):
        for sender in ("p", "q"):
            log.deliver("p", sender, number)
            log.deliver("q", sender, number)
            if number % 2:
                log.confirmed(sender, number)


def kinds(violations: list[Violation]) -> list[tuple[str, str]]:
    return [(v.kind, v.member) for v in violations]


def test_a_clean_log_has_no_violation() -> None:
    log = Log()
    two_members_sending(log)
    log.final("p", "q", last=3)
    assert log.finish() == []
    checker = log.checker
    assert checker.untouched == ["p", "q"]
    assert checker.survivors == ["p", "q"]
    assert checker.deliveries == 2 * 2 * 4
    # p and q each hold both confirmed messages of each: 1 and the final 3.
    assert checker.confirmed_checks == 2 * 2 * 2


def test_a_gap_is_a_violation() -> None:
    log = Log()
    two_members_sending(log)
    log.deliver("q", "p", 4)  # 3 missing
    [violation] = log.checker.violations
    assert (violation.kind, violation.member) == ("gap", "q")
    assert "4 after 2, 3 missing" in violation.text


def test_a_first_message_other_than_0_is_a_gap_for_a_member_there_before_it_began() -> None:
    log = Log()
    log.start("p", "a")
    log.start("q", "b")
    log.numbered("q")
    log.deliver("p", "q", 1)
    assert kinds(log.checker.violations) == [("gap", "p")]
    # A member that joined after the sender began may start anywhere.
    log.start("r", "c")
    log.deliver("r", "q", 5, 6)
    assert kinds(log.checker.violations) == [("gap", "p")]


def test_a_duplicate_is_a_violation() -> None:
    log = Log()
    two_members_sending(log)
    log.deliver("p", "q", 2)
    log.deliver("p", "q", 0)  # reordered, or a second copy: either is a duplicate
    assert kinds(log.checker.violations) == [("duplicate", "p"), ("duplicate", "p")]
    assert "2 again, after 2" in log.checker.violations[0].text


def test_a_delivery_after_the_death_was_reported_is_a_violation() -> None:
    log = Log()
    two_members_sending(log)
    log.death("p", "q")
    log.deliver("p", "q", 3)
    [violation] = log.checker.violations
    assert (violation.kind, violation.member) == ("after-death", "p")
    assert "3 from q " in violation.text
    # To another receiver, which was not told of the death, it is no violation.
    log.deliver("q", "q", 3)
    assert len(log.checker.violations) == 1


def test_a_message_or_death_of_a_member_never_announced_is_a_violation() -> None:
    log = Log()
    two_members_sending(log)
    log.checker.event("p", {"event": "msg", "sender": "<stranger>", "msg": 0}, log.at())
    log.checker.event(
        "q", {"event": "members_changed", "births": [], "deaths": ["<stranger>"]}, log.at()
    )
    assert kinds(log.checker.violations) == [("unannounced", "p"), ("unannounced", "q")]


def test_a_lost_confirmed_message_is_a_violation() -> None:
    log = Log()
    log.start("p", "a")
    log.start("q", "b")
    log.numbered("q")
    log.deliver("q", "q", 0, 1)
    log.deliver("p", "q", 0)
    log.confirmed("q", 1)  # q's confirmed broadcast returned, yet p never gets 1
    log.killed("q")
    log.final("p", last=0)
    violations = log.finish()
    assert kinds(violations) == [("lost-confirmed", "p")]
    assert "lacks q's confirmed message 1" in violations[0].text


def store_cut(log: Log, host: str) -> None:
    start = log.at()
    log.checker.fault(Fault("store", f"store cut: {host} <-> db", start, log.at(), frozenset(host)))


def test_a_confirmed_message_need_not_reach_a_member_touched_before_it_was_confirmed() -> None:
    log = Log()
    log.start("p", "a")
    log.start("q", "b")
    log.numbered("q")
    log.deliver("q", "q", 0, 1)
    store_cut(log, "a")  # p survived it, but the checks ask nothing more of p
    log.confirmed("q", 1)
    log.killed("q")
    log.final("p", last=0)
    assert log.finish() == []
    assert log.checker.untouched == []


def test_a_fault_after_the_confirmation_does_not_excuse_a_lost_message() -> None:
    log = Log()
    log.start("p", "a")
    log.start("q", "b")
    log.numbered("q")
    log.deliver("q", "q", 0, 1)
    log.confirmed("q", 1)
    store_cut(log, "a")
    log.killed("p")  # and p's log ends without q's 1
    log.final("q", last=2)
    violations = log.finish()
    assert kinds(violations) == [("lost-confirmed", "p")]


def test_a_fault_on_the_host_shortly_before_a_member_started_counts() -> None:
    log = Log()
    start = log.at()
    end = log.at()
    log.checker.fault(Fault("partitions", "split: a isolated", start, end, frozenset("a")))
    log.start("p", "a")  # launched 1 s after the heal: within the 2 s margin
    log.now += 10.0
    log.start("q", "a")  # long after it
    checker = log.checker
    assert checker.touched_at(checker.logs["p"]) == start
    assert checker.touched_at(checker.logs["q"]) == math.inf
    # A kill touches its process from when it was sent.
    log.killed("q")
    assert checker.touched_at(checker.logs["q"]) == log.now - 1


def test_a_connected_member_that_stopped_is_a_violation() -> None:
    log = Log()
    two_members_sending(log)
    log.event("q", "terminate", reason="shutdown")
    log.checker.exited("q", 3, log.at())  # stopped by its group: a gm outcome, not a crash
    log.death("p", "q")
    log.final("p", last=3)
    violations = log.finish()
    assert kinds(violations) == [("not-running", "q")]
    assert "exited with status 3 (reason shutdown)" in violations[0].text


def test_a_member_whose_final_broadcast_did_not_return_is_a_violation() -> None:
    log = Log()
    two_members_sending(log)
    log.final("p", last=3)
    log.deliver("q", "p", 3)
    assert kinds(log.finish()) == [("fence", "q"), ("not-running", "q")]


def test_a_survivor_lacking_another_s_final_message_is_a_violation() -> None:
    log = Log()
    two_members_sending(log)
    log.final("p", last=3)
    log.deliver("q", "p", 3)
    log.deliver("q", "q", 3)
    log.confirmed("q", 3)
    log.event("q", "numbered_end", last=3)  # p never got q's 3
    violations = log.finish()
    assert kinds(violations) == [("fence", "p"), ("lost-confirmed", "p")]
    assert "holds q's messages up to 2, not up to its final confirmed one, 3" in (
        violations[0].text
    )


def test_an_exit_that_is_no_gm_outcome_is_a_crash() -> None:
    log = Log()
    two_members_sending(log)
    log.checker.exited("p", 1, log.at(), "Traceback ...")
    log.checker.exited("q", -signal.SIGKILL, log.at())  # no nemesis killed it
    assert kinds(log.checker.violations) == [("crash", "p"), ("crash", "q")]
    assert log.checker.violations[0].text == "exited with status 1: Traceback ..."


def test_the_summary_and_the_exit_status() -> None:
    from trio_gm.testing.nemesis import NemesisReport

    report = NemesisReport(NemesisConfig(hosts=5, seconds=10))
    report.actions.update({"partitions": 2, "kills": 1})
    report.details.update({"split": 2})
    report.deliveries = 1234
    out = io.StringIO()
    assert print_summary(report, out) == 0
    text = out.getvalue()
    assert "operations                    3" in text
    assert "partitions                  2  (split 2)" in text
    assert "deliveries checked         1234" in text
    report.violations = [Violation("gap", "a1.1", "from b1.1: 5 after 3, 4 missing")]
    report.violation_count = 1
    out = io.StringIO()
    assert print_summary(report, out) == 1
    assert out.getvalue().startswith("VIOLATION gap: a1.1: from b1.1: 5 after 3, 4 missing\n")


def test_a_progress_line_is_rewritten_on_a_terminal_and_printed_now_and_then_elsewhere() -> None:
    terminal = io.StringIO()
    progress = Progress(terminal, tty=True)
    progress.update("one")
    progress.update("two")
    progress.note("VIOLATION x")
    progress.update("three")
    progress.done()
    assert terminal.getvalue() == "\r\x1b[Kone\r\x1b[Ktwo\r\x1b[KVIOLATION x\n\r\x1b[Kthree\n"
    log = io.StringIO()
    progress = Progress(log, tty=False, every=3600.0)
    progress.update("one")
    progress.update("two")  # too soon: not printed
    progress.done()
    assert log.getvalue() == "one\n"
