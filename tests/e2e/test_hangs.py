"""all-threads-blocked: every thread of a process waits (condition variables,
joins, locks) with no lock cycle among them, and nothing will wake any."""

from __future__ import annotations

from helpers import program_facts, trace_json


def hangs(report: dict) -> list:
    return [f for f in report["findings"] if f["kind"] == "all-threads-blocked"]


def functions(stack) -> set:
    return {frame["function"] for frame in stack or [] if frame["function"]}


def test_threads_waiting_on_a_condition_nobody_signals(ig_daemon, program):
    report, stderr = trace_json(ig_daemon, [program("hang"), "condvar"], "--hang-time", "2",
                                "--stop-on-deadlock", "--timeout", "120")
    assert "hang: all 3 threads" in stderr, stderr
    facts = program_facts(stderr)
    (hang,) = hangs(report)
    assert [f["kind"] for f in report["findings"]] == ["all-threads-blocked"]
    by_tid = {b["tid"]: b for b in hang["blocked"]}
    assert set(by_tid) == {facts["main"][0], facts["a"][0], facts["b"][0]}
    assert all(b["wait_kind"] == "futex" and b["held"] == [] for b in by_tid.values())
    assert all(b["blocked_for_seconds"] >= 2 for b in by_tid.values())
    # where each waits: the program's own code, under the C library's wait
    assert "main" in functions(by_tid[facts["main"][0]]["stack"])
    assert "wait_forever" in functions(by_tid[facts["a"][0]]["stack"])
    assert "wait_forever" in functions(by_tid[facts["b"][0]]["stack"])
    # both workers wait on the same condition variable (a futex word inside it)
    condvar = facts["C"][0]
    words = {int(by_tid[facts[name][0]]["waits_for"], 16) for name in ("a", "b")}
    assert len(words) == 1 and 0 <= words.pop() - condvar < 48


def test_a_thread_blocked_on_a_lock_held_by_a_waiting_thread(ig_daemon, program):
    report, stderr = trace_json(ig_daemon, [program("hang"), "lock"], "--hang-time", "2",
                                "--stop-on-deadlock", "--timeout", "120")
    facts = program_facts(stderr)
    assert [f["kind"] for f in report["findings"]] == ["all-threads-blocked"]  # no lock cycle: no actual deadlock
    by_tid = {b["tid"]: b for b in hangs(report)[0]["blocked"]}
    a, b, lock = facts["a"][0], facts["b"][0], facts["L"][0]
    assert by_tid[b]["wait_kind"] == "mutex" and int(by_tid[b]["waits_for"], 16) == lock
    assert by_tid[b]["held_by"] == a
    # "a" holds L; the condition variable's mutex it waits with is not held while it waits
    assert [int(h, 16) for h in by_tid[a]["held"]] == [lock]
    assert by_tid[a]["wait_kind"] == "futex"


def test_a_running_thread_means_no_hang(ig_daemon, program):
    """Two threads wait forever but a third keeps running: the process is not
    hung (it may still signal them), however long they wait."""
    report, stderr = trace_json(ig_daemon, [program("hang"), "busy"], "--hang-time", "2", "--timeout", "8")
    assert "hang:" not in stderr
    assert hangs(report) == []
    assert report["processes"][0]["traced"] is True
