"""No silent miss: big graphs analysed to the end, long cycles, lock misuse the
gadget sees as it happens, spinlocks, one process counted once."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from helpers import program_facts, start_watch, trace_json


def lost(report: dict) -> dict:
    return {k: v for k, v in report["stats"]["events_lost"].items() if v}


def test_an_inversion_after_half_a_million_other_edges_is_found(ig_daemon, program):
    started = time.monotonic()
    report, stderr = trace_json(ig_daemon, [program("bigorder"), "1001"], "--fetch-interval", "50",
                                "--analysis-time", "60", timeout=600)
    elapsed = time.monotonic() - started
    facts = program_facts(stderr)
    assert lost(report) == {}
    assert report["stats"]["edges_seen"] >= 500_000
    (finding,) = report["findings"]
    assert finding["kind"] == "potential-deadlock"
    assert sorted(int(m, 16) for m in finding["mutexes"]) == sorted(facts["X"] + facts["Y"])
    assert sorted(finding["threads"]) == sorted(facts["xy"] + facts["yx"])
    # analysed to the end, within the stated bound
    assert report["stats"]["analysis_incomplete"] == 0
    assert all(p["limits"] == [] for p in report["processes"])
    assert elapsed < 300, elapsed


def test_lots_of_inversions_give_the_same_findings_every_run(ig_daemon, program):
    """TSan's stress test 19: 45 locks, every pair taken both ways by one thread.
    Edges fetched every 20 ms arrive in batches that cut the rounds anywhere;
    the findings are the 990 pairs whatever the cut (the 3-lock cycles found
    before a pair's reverse arrived are settled away)."""
    report, _ = trace_json(ig_daemon, [program("rotations"), "45"], "--fetch-interval", "20")
    assert lost(report) == {} and report["stats"]["edges_seen"] >= 45 * 44
    assert sorted(len(f["mutexes"]) for f in report["findings"]) == [2] * (45 * 44 // 2)
    assert {f["kind"] for f in report["findings"]} == {"single-thread-inversion"}


def test_seventeen_dining_philosophers_hang_is_reported(ig_daemon, program):
    report, stderr = trace_json(ig_daemon, [program("deadlock"), "ring", "17"], "--timeout", "120",
                                "--stop-on-deadlock")
    assert "stopped at the deadlock" in stderr, stderr
    facts = program_facts(stderr)
    (deadlock,) = [f for f in report["findings"] if f["kind"] == "actual-deadlock"]
    assert set(deadlock["threads"]) == {facts[f"t{i}"][0] for i in range(17)}
    assert {int(m, 16) for m in deadlock["mutexes"]} == {facts[f"L{i}"][0] for i in range(17)}
    (potential,) = [f for f in report["findings"] if f["kind"] == "potential-deadlock"]
    assert len(potential["mutexes"]) == 17
    assert report["stats"]["cycle_search_cut"] == 0


@pytest.mark.parametrize("mode,kind", [("wrlock-twice", "rwlock"), ("errorcheck", "mutex")])
def test_requesting_a_held_lock_again_is_relock_held(ig_daemon, program, mode, kind):
    report, stderr = trace_json(ig_daemon, [program("misuse"), mode])
    facts = program_facts(stderr)
    assert "result 35" in stderr  # EDEADLK: the program went on
    (finding,) = report["findings"]
    assert (finding["kind"], finding["lock_kinds"]) == ("relock-held", [kind])
    assert finding["mutexes"] == [hex(facts["L"][0])]
    assert finding["threads"] == facts["t"]
    (edge,) = finding["edges"]
    # both sites: where it took the lock, and where it asked again
    assert edge["from_stack"][0]["function"] == "main" and edge["to_stack"][0]["function"] == "main"
    assert edge["from_stack"][0]["line"] < edge["to_stack"][0]["line"]


@pytest.mark.parametrize("mode", ["recursive", "read-twice"])
def test_allowed_reentry_is_no_finding(ig_daemon, program, mode):
    report, stderr = trace_json(ig_daemon, [program("misuse"), mode])
    assert "result 0" in stderr
    assert report["findings"] == []


@pytest.mark.parametrize("mode", ["unlock-other", "unlock-fresh"])
def test_unlocking_a_lock_another_thread_holds(ig_daemon, program, mode):
    """With --unlock-checks (glibc's unlocks probed), also by a thread whose
    first lock operation that is (it has no lock state)."""
    report, stderr = trace_json(ig_daemon, [program("misuse"), mode], "--unlock-checks")
    facts = program_facts(stderr)
    (finding,) = report["findings"]  # and no exit-holding-lock for the thread it was taken from
    assert finding["kind"] == "unlock-not-owner"
    assert finding["mutexes"] == [hex(facts["L"][0])]
    unlocker, holder = finding["threads"]
    assert unlocker == facts["t"][0] and holder != unlocker


@pytest.mark.parametrize("mode", ["unlock-other", "unlock-fresh"])
def test_a_lock_another_thread_unlocked_unseen_is_not_held(ig_daemon, program, mode):
    """Without unlock probes on glibc, the thread that took the lock learns from
    the owner glibc records that it holds it no more: no exit-holding-lock,
    nothing to report."""
    report, _ = trace_json(ig_daemon, [program("misuse"), mode])
    assert report["findings"] == []


def test_a_thread_that_exits_holding_a_lock(ig_daemon, program):
    report, stderr = trace_json(ig_daemon, [program("misuse"), "exit-holding"])
    facts = program_facts(stderr)
    (finding,) = report["findings"]
    assert finding["kind"] == "exit-holding-lock"
    assert finding["threads"] == facts["t"] and finding["mutexes"] == [hex(facts["L"][0])]
    (edge,) = finding["edges"]
    assert edge["from_stack"][0]["function"] == "exit_holding"  # where it took the lock


def test_spinlock_inversion_is_found(ig_daemon, program):
    report, stderr = trace_json(ig_daemon, [program("spin")])
    facts = program_facts(stderr)
    (finding,) = report["findings"]
    assert (finding["kind"], finding["lock_kinds"]) == ("potential-deadlock", ["spinlock", "spinlock"])
    assert sorted(int(m, 16) for m in finding["mutexes"]) == sorted(facts["A"] + facts["B"])
    assert "cannot carry a uprobe" not in stderr  # x86-64 glibc's pthread_spin_lock is probed after its atomic


def test_one_process_is_counted_once_whatever_the_fetch_interval(ig_daemon, program):
    report, _ = trace_json(ig_daemon, [program("abba")], "--fetch-interval", "25")
    assert report["stats"]["processes_seen"] == 1
    assert report["stats"]["processes_exited"] == 1
    assert len(report["processes"]) == 1


def test_a_self_deadlock_is_reported_where_the_thread_blocks(ig_daemon, program):
    report, stderr = trace_json(ig_daemon, [program("misuse"), "self-deadlock"], "--timeout", "60",
                                "--stop-on-deadlock")
    assert "stopped at the deadlock" in stderr, stderr
    facts = program_facts(stderr)
    kinds = sorted(f["kind"] for f in report["findings"])
    assert kinds == ["actual-deadlock", "relock-held"]
    (deadlock,) = [f for f in report["findings"] if f["kind"] == "actual-deadlock"]
    (blocked,) = deadlock["blocked"]
    assert blocked["tid"] == facts["t"][0] and blocked["held_by"] == facts["t"][0]
    assert blocked["stack"][0]["line"] == facts["second"][0]  # where it blocks, not where it took the lock


def test_std_lock_back_off_in_opposite_orders_is_quiet(ig_daemon, program):
    """std::lock / std::scoped_lock: lock one, try the other, back off: no deadlock,
    whatever the order, so no finding (the tries make no incoming edge)."""
    binary = program("stdlock", ("-O2", "-g", "-std=c++17"))
    report, _ = trace_json(ig_daemon, [binary], "--show-suppressed")
    assert report["findings"] == []
    assert report["processes"][0]["traced"] is True


@pytest.mark.parametrize("size", [24, 48, 64, 100])
def test_long_rings_across_threads_are_found(ig_daemon, program, size):
    report, stderr = trace_json(ig_daemon, [program("ring"), size])
    facts = program_facts(stderr)
    (finding,) = report["findings"]
    assert finding["kind"] == "potential-deadlock"
    assert {int(m, 16) for m in finding["mutexes"]} == {facts[f"L{i}"][0] for i in range(size)}
    assert sorted(finding["threads"]) == sorted(facts[f"t{i}"][0] for i in range(size))
    assert report["stats"]["cycle_search_cut"] == 0


def test_sixty_four_held_locks_are_tracked(ig_daemon, program):
    """A thread holding 64 locks asks for one more: the edge from the deepest
    one is recorded, so the inversion through it is found. The 65th lock is
    past the held set and counted as such."""
    report, stderr = trace_json(ig_daemon, [program("nest"), 64])
    facts = program_facts(stderr)
    (finding,) = report["findings"]
    assert finding["kind"] == "potential-deadlock"
    assert {int(m, 16) for m in finding["mutexes"]} == {facts["L63"][0], facts["X"][0]}
    assert sorted(finding["threads"]) == sorted(facts["deep"] + facts["inverted"])
    assert lost(report) == {"held_lock_overflow": 1}


def test_nesting_beyond_capacity_is_reported_as_a_limit(ig_daemon, program):
    """Helgrind's 310 nested locks: locks past the 64th are not tracked, and
    the report says so for the process instead of claiming nothing is there."""
    report, _ = trace_json(ig_daemon, [program("nest"), 310])
    untracked = 310 - 64 + 1  # L64..L309, then X
    assert lost(report) == {"held_lock_overflow": untracked}
    (process,) = report["processes"]
    assert process["limits"] == [f"{untracked} lock(s) not tracked: the thread held too many at once"]


def test_four_threads_cycling_sixteen_thousand_mutexes_lose_nothing(ig_daemon, program):
    """Default settings: every one of the 65,532 edges of a burst arrives, and
    the inversion after it is found."""
    report, stderr = trace_json(ig_daemon, [program("pairs"), 16384, 4, 3], timeout=600)
    facts = program_facts(stderr)
    assert lost(report) == {}
    assert report["stats"]["edges_seen"] >= 4 * 16383 + 2
    (finding,) = report["findings"]
    assert {int(m, 16) for m in finding["mutexes"]} == {facts["X"][0], facts["Y"][0]}
    assert sorted(finding["threads"]) == sorted(facts["xy"] + facts["yx"])


def test_the_same_churn_under_watch_loses_nothing(ig_daemon, program, tmp_path):
    """watch, default fetch interval: the burst of 65,532 edges arrives whole."""
    out = tmp_path / "report.json"
    watch, lines = start_watch(ig_daemon, out)
    try:
        churn = subprocess.Popen([str(program("pairs")), "16384", "4", "3"], stdout=subprocess.PIPE, text=True)
        stdout, _ = churn.communicate(timeout=300)
        facts = program_facts(stdout)
        lines.wait_for(lambda line: f"(pid={churn.pid}," in line, timeout=300)
        watch.send_signal(signal.SIGINT)
        watch.wait(300)
    finally:
        if watch.poll() is None:
            watch.kill()
    report = json.loads(out.read_text())
    assert lost(report) == {}
    (finding,) = [f for f in report["findings"] if f["pid"] == churn.pid]
    assert {int(m, 16) for m in finding["mutexes"]} == {facts["X"][0], facts["Y"][0]}
    assert report["stats"]["edges_seen"] >= 4 * 16383 + 2


def test_frames_captured_while_threads_start_are_all_named(ig_daemon, program):
    """The gadget's frame lookup (bpf_find_vma) gives up when the process's
    mmap lock is taken, which thread starts do all the time: such frames are
    placed from the process's mappings, and every one is named."""
    report, stderr = trace_json(ig_daemon, [program("burst")])
    facts = program_facts(stderr)
    pairs = {frozenset((facts[f"A{i}"][0], facts[f"B{i}"][0])) for i in range(16)}
    cycles = [f for f in report["findings"] if f["kind"] == "potential-deadlock"]
    assert {frozenset(int(m, 16) for m in f["mutexes"]) for f in cycles} == pairs
    unnamed = [(f["id"], e["tid"], frame) for f in cycles for e in f["edges"] for frame in e["to_stack"][:2]
               if frame["function"] is None]
    assert unnamed == []
    assert {e["to_stack"][0]["function"] for f in cycles for e in f["edges"]} == \
        {f"{order}_{i}" for order in ("a_then_b", "b_then_a") for i in range(16)}


@pytest.mark.parametrize("args,kind", [(["unlock-twice"], "mutex"), (["unlock-twice", "recursive"], "mutex"),
                                       (["rwlock-unlock-twice"], "rwlock")])
def test_unlocking_a_lock_nobody_holds(ig_daemon, program, args, kind):
    """Unlocked once more than it was locked (Helgrind's tc10_rec_lock and
    tc12_rwl_trivial, liblockdep's unlock_balance): where the unlock is probed
    (glibc's mutexes: with --unlock-checks), nobody holds the lock then."""
    report, stderr = trace_json(ig_daemon, [program("misuse"), *args], "--unlock-checks")
    facts = program_facts(stderr)
    (finding,) = report["findings"]
    assert (finding["kind"], finding["lock_kinds"]) == ("unlock-not-held", [kind])
    assert finding["mutexes"] == [hex(facts["L"][0])] and finding["threads"] == facts["t"]
    assert finding["edges"][0]["to_stack"][0]["function"] == "main"


def test_unlocking_memory_that_holds_no_lock_names_no_thread(ig_daemon, program):
    """Helgrind's tc09_bad_unlock, its last case: the owner word is garbage, no
    thread id; nothing is made of it."""
    report, stderr = trace_json(ig_daemon, [program("misuse"), "unlock-garbage"], "--unlock-checks")
    assert "result 22" in stderr  # EINVAL: glibc saw no mutex there either
    assert report["findings"] == []
