"""Actual deadlocks on hand-made blocked-thread records: who waits for whom."""

from __future__ import annotations

from builders import PID, R, W, blocked

from igdeadlock.analysis.waitfor import WaitForTracker, find_wait_cycles


def test_two_threads_waiting_for_each_other_form_a_wait_cycle():
    (deadlock,) = find_wait_cycles([blocked(1, 0xB, [(0xA, W)]), blocked(2, 0xA, [(0xB, W)])])
    assert deadlock.threads == (1, 2)
    assert [(s.holds[0], s.waits_for[0]) for s in deadlock.steps] == [(0xA, 0xB), (0xB, 0xA)]


def test_owner_from_glibc_closes_the_cycle_without_held_sets():
    cycles = find_wait_cycles([blocked(1, 0xB, [], owner=2), blocked(2, 0xA, [], owner=1)])
    assert [d.threads for d in cycles] == [(1, 2)]


def test_readers_do_not_block_readers_and_timed_waits_end():
    assert find_wait_cycles([blocked(1, 0xB, [(0xA, R)], mode=R), blocked(2, 0xA, [(0xB, R)], mode=R)]) == []
    assert find_wait_cycles([blocked(1, 0xB, [(0xA, W)], how=2), blocked(2, 0xA, [(0xB, W)])]) == []


def test_waiting_for_a_running_owner_is_no_deadlock():
    assert find_wait_cycles([blocked(1, 0xA, [], owner=7)]) == []


def test_relocking_a_held_lock_is_a_self_deadlock():
    (deadlock,) = find_wait_cycles([blocked(1, 0xA, [(0xA, W)], owner=1)])
    assert deadlock.threads == (1,)


def test_tracker_reports_only_cycles_that_persist_across_two_fetches():
    tracker = WaitForTracker()
    tracker.thread_blocked(blocked(1, 0xB, [(0xA, W)]))
    tracker.thread_blocked(blocked(2, 0xA, [(0xB, W)]))
    assert tracker.tick() == []  # first sight: a candidate
    (deadlock,) = tracker.tick()  # still there one fetch later
    assert deadlock.threads == (1, 2)
    assert tracker.tick() == []  # reported once


def test_tracker_forgets_a_cycle_that_resolves():
    tracker = WaitForTracker()
    tracker.thread_blocked(blocked(1, 0xB, [(0xA, W)]))
    tracker.thread_blocked(blocked(2, 0xA, [(0xB, W)]))
    assert tracker.tick() == []
    tracker.thread_resumed(1)
    assert tracker.tick() == []
    tracker.thread_blocked(blocked(1, 0xB, [(0xA, W)]))
    assert tracker.tick() == []  # a new candidate, not yet confirmed
    tracker.process_exited(PID)
    assert tracker.blocked == {}


def test_a_deadlock_lasts_until_its_process_exits():
    from igdeadlock.report.model import build_deadlock_findings

    tracker = WaitForTracker()
    for _ in range(2):
        tracker.thread_blocked(blocked(1, 0xB, [(0xA, W)]))
        tracker.thread_blocked(blocked(2, 0xA, [(0xB, W)]))
        confirmed = tracker.tick()
    assert len(confirmed) == 1  # since=10 ns in every record
    tracker.process_exited(PID, 1, exited=3_000_000_010)
    (view,) = build_deadlock_findings(tracker.deadlocks.values(), lambda site: None, now_boot_ns=99_000_000_000)
    assert [w.blocked_for for w in view.waits] == [3.0, 3.0]  # not 99 s: it ended with its process
