"""Actual deadlocks on hand-made blocked-thread records: who waits for whom."""

from __future__ import annotations

from builders import PID, R, W, blocked

from igdeadlock.analysis.waitfor import Hang, WaitForTracker, find_wait_cycles


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


FUTEX = 3  # LockKind.FUTEX: a wait outside the lock functions


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def hang_tracker(seconds: float = 5.0):
    clock = Clock()
    return WaitForTracker(hang_seconds=seconds, clock=clock), clock


def test_every_thread_waiting_long_enough_is_a_hang():
    tracker, clock = hang_tracker()
    tracker.thread_blocked(blocked(1, 0xC0, [], kind=FUTEX, threads=3))
    tracker.thread_blocked(blocked(2, 0xC0, [], kind=FUTEX, threads=3))
    tracker.thread_blocked(blocked(3, 0xA, [], owner=9, threads=3))  # a lock held by a thread long gone
    clock.now += 4.9
    assert tracker.tick() == []  # not long enough yet
    clock.now += 0.2
    (hang,) = tracker.tick()
    assert isinstance(hang, Hang) and hang.threads == (1, 2, 3)
    assert tracker.tick() == []  # reported once


def test_a_thread_not_waiting_or_waiting_with_a_deadline_means_no_hang():
    tracker, clock = hang_tracker()
    tracker.thread_blocked(blocked(1, 0xC0, [], kind=FUTEX, threads=3))
    tracker.thread_blocked(blocked(2, 0xC0, [], kind=FUTEX, threads=3))
    clock.now += 60
    assert tracker.tick() == []  # the third thread runs
    tracker.thread_blocked(blocked(3, 0xA, [], how=2, threads=3))
    clock.now += 60
    assert tracker.tick() == []  # its wait ends by itself


def test_the_most_recent_wait_tells_how_many_threads_there_are():
    """Threads exited since an older record: the newest count holds."""
    tracker, clock = hang_tracker()
    tracker.thread_blocked(blocked(1, 0xC0, [], kind=FUTEX, threads=5, observed=20))
    tracker.thread_blocked(blocked(2, 0xC0, [], kind=FUTEX, threads=2, observed=30))
    clock.now += 10
    assert [h.threads for h in tracker.tick()] == [(1, 2)]


def test_time_waited_before_the_record_came_counts():
    tracker, clock = hang_tracker()
    long_ago = blocked(1, 0xC0, [], kind=FUTEX, threads=1)._replace(since=0, observed=6_000_000_000)
    tracker.thread_blocked(long_ago)
    (hang,) = tracker.tick()
    assert hang.waited >= 5


def test_a_lock_cycle_is_reported_as_the_deadlock_not_as_a_hang():
    tracker, clock = hang_tracker(seconds=0)
    tracker.thread_blocked(blocked(1, 0xB, [(0xA, W)], threads=2))
    tracker.thread_blocked(blocked(2, 0xA, [(0xB, W)], threads=2))
    assert tracker.tick() == []
    (deadlock,) = tracker.tick()
    assert not isinstance(deadlock, Hang)


def test_futex_waits_are_no_lock_waits():
    assert find_wait_cycles([blocked(1, 0xA, [(0xB, W)], kind=FUTEX), blocked(2, 0xB, [(0xA, W)])]) == []


def snapshot_of(*waits):
    """A snapshot's records: (tid, waits for, owner, context switches so far)."""
    return [blocked(tid, lock, [], owner=owner, switches=switches) for tid, lock, owner, switches in waits]


def test_a_snapshot_cycle_is_confirmed_by_the_next_snapshot_when_no_thread_ran():
    tracker = WaitForTracker()
    tracker.snapshot_taken(snapshot_of((1, 0xB, 2, 10), (2, 0xA, 1, 20)))
    assert tracker.tick(snapshot=True) == []
    tracker.snapshot_taken(snapshot_of((1, 0xB, 2, 10), (2, 0xA, 1, 20)))
    (deadlock,) = tracker.tick(snapshot=True)
    assert deadlock.threads == (1, 2)
    assert tracker.snapshots == 2


def test_a_thread_that_ran_between_two_snapshots_waits_anew():
    """Contention: the same thread on the same lock, but it ran in between (its
    context switches went up): the cycle of the first look is no deadlock."""
    tracker = WaitForTracker()
    tracker.snapshot_taken(snapshot_of((1, 0xB, 2, 10), (2, 0xA, 1, 20)))
    assert tracker.tick(snapshot=True) == []
    tracker.snapshot_taken(snapshot_of((1, 0xB, 2, 11), (2, 0xA, 1, 20)))
    assert tracker.tick(snapshot=True) == []
    tracker.snapshot_taken(snapshot_of((1, 0xB, 2, 11), (2, 0xA, 1, 20)))
    assert [d.threads for d in tracker.tick(snapshot=True)] == [(1, 2)]


def test_fetches_between_snapshots_do_not_confirm_a_snapshot_cycle():
    tracker = WaitForTracker()
    tracker.snapshot_taken(snapshot_of((1, 0xB, 2, 10), (2, 0xA, 1, 20)))
    assert tracker.tick(snapshot=True) == []
    assert tracker.tick() == [] and tracker.tick() == []  # map fetches: nothing looked at the threads again
    tracker.snapshot_taken(snapshot_of((1, 0xB, 2, 10), (2, 0xA, 1, 20)))
    assert len(tracker.tick(snapshot=True)) == 1


def test_a_thread_missing_from_the_next_snapshot_waits_no_more():
    tracker = WaitForTracker()
    tracker.snapshot_taken(snapshot_of((1, 0xB, 2, 10), (2, 0xA, 1, 20)))
    tracker.snapshot_taken(snapshot_of((1, 0xB, 2, 10)))
    assert set(tracker.blocked) == {1}
    assert tracker.tick(snapshot=True) == []


def test_the_trace_knows_a_blocked_thread_better_than_a_snapshot():
    tracker = WaitForTracker()
    traced = blocked(1, 0xB, [(0xA, W)])
    tracker.thread_blocked(traced)
    tracker.snapshot_taken(snapshot_of((1, 0xB, 0, 10), (2, 0xA, 1, 20)))
    assert tracker.blocked[1] is traced  # with the locks it holds, which no snapshot knows
    tracker.snapshot_taken(snapshot_of((2, 0xA, 1, 20)))
    assert 1 in tracker.blocked  # until the trace says it resumed
