"""Lock semantics end to end: one C program per case, the exact set of findings."""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytest

from helpers import program_facts, trace_json, unsuppressed

OPTIMIZED = ("-O2", "-g", "-fomit-frame-pointer")


def summary(report: dict) -> List[Tuple[str, object, frozenset]]:
    """(kind, suppressed, set of mutex addresses) of every finding, sorted."""
    return sorted(((f["kind"], f["suppressed"] or "", frozenset(int(m, 16) for m in f["mutexes"]))
                   for f in report["findings"]), key=repr)


def locks(facts: Dict[str, List[int]], *names: str) -> frozenset:
    return frozenset(facts[name][0] for name in names)


def traced(daemon: str, binary, *args: str) -> Tuple[dict, Dict[str, List[int]]]:
    report, stderr = trace_json(daemon, [binary, *args])
    return report, program_facts(stderr)


@pytest.mark.parametrize("size", [3, 5])
def test_ring_across_threads(ig_daemon, program, size):
    report, facts = traced(ig_daemon, program("ring"), str(size))
    names = [f"L{i}" for i in range(size)]
    assert summary(report) == [("potential-deadlock", "", locks(facts, *names))]
    (finding,) = report["findings"]
    assert sorted(finding["threads"]) == sorted(facts[f"t{i}"][0] for i in range(size))


def test_single_thread_inversion(ig_daemon, program):
    report, facts = traced(ig_daemon, program("single_thread"))
    assert summary(report) == [("single-thread-inversion", "", locks(facts, "A", "B"))]
    assert report["findings"][0]["threads"] == facts["main"]


def test_gate_lock_suppresses(ig_daemon, program):
    report, facts = traced(ig_daemon, program("gate"))
    assert summary(report) == [("potential-deadlock", "gate-lock", locks(facts, "A", "B"))]
    assert report["findings"][0]["gate_locks"] == [hex(facts["G"][0])]


def test_trylock_without_cycle(ig_daemon, program):
    report, _ = traced(ig_daemon, program("trylock"), "nocycle")
    assert report["findings"] == []


def test_trylock_held_lock_closes_a_cycle(ig_daemon, program):
    report, facts = traced(ig_daemon, program("trylock"), "cycle")
    assert summary(report) == [("potential-deadlock", "", locks(facts, "A", "B"))]


def test_timedlock(ig_daemon, program):
    report, facts = traced(ig_daemon, program("timedlock"))
    # the cycle closes through a timed wait; the timed-out lock left nothing held
    assert summary(report) == [("potential-deadlock", "timed-lock", locks(facts, "A", "B"))]


def test_rwlock_read_read_is_not_a_deadlock(ig_daemon, program):
    report, facts = traced(ig_daemon, program("rwlock"), "read-read")
    assert summary(report) == [("potential-deadlock", "read-read", locks(facts, "A", "B"))]
    assert unsuppressed(report) == []


def test_rwlock_write_read_is_a_deadlock(ig_daemon, program):
    report, facts = traced(ig_daemon, program("rwlock"), "write-read")
    assert summary(report) == [("potential-deadlock", "", locks(facts, "A", "B"))]
    modes = {(e["from_mode"], e["to_mode"]) for e in report["findings"][0]["edges"]}
    assert modes == {("read", "write")}
    assert report["findings"][0]["lock_kinds"] == ["rwlock", "rwlock"]


def test_recursive_mutex(ig_daemon, program):
    report, facts = traced(ig_daemon, program("recursive"))
    assert summary(report) == [("potential-deadlock", "", locks(facts, "R", "B"))]
    assert sorted(report["findings"][0]["threads"]) == sorted(facts["t1"] + facts["t2"])


def test_destroy_and_reinit_at_the_same_address(ig_daemon, program):
    report, facts = traced(ig_daemon, program("destroy"))
    # t1's A and t2's A' are different locks; only t3 (A' -> B) closes a cycle with t2
    assert summary(report) == [("potential-deadlock", "", locks(facts, "A", "B"))]
    (finding,) = report["findings"]
    generations = dict(zip((int(m, 16) for m in finding["mutexes"]), finding["generations"]))
    assert generations == {facts["A"][0]: 1, facts["B"][0]: 0}
    assert sorted(finding["threads"]) == sorted(facts["t2"] + facts["t3"])


def test_fork_same_addresses_are_different_locks(ig_daemon, program):
    report, facts = traced(ig_daemon, program("fork"))
    assert report["findings"] == []
    assert report["stats"]["processes_seen"] == 2


def test_sequential_locking_makes_no_edge(ig_daemon, program):
    report, _ = traced(ig_daemon, program("sequential"))
    assert report["findings"] == []
    assert report["stats"]["edges_seen"] == 0


def test_threads_hammering_private_nested_locks(ig_daemon, program):
    report, _ = traced(ig_daemon, program("hammer"))
    assert report["findings"] == []
    assert report["stats"]["edges_seen"] == 4
    assert report["stats"]["events_lost"]["held_lock_overflow"] == 0


def test_deep_nesting_reports_every_edge_once(ig_daemon, program):
    report, facts = traced(ig_daemon, program("deep"))
    assert summary(report) == [("potential-deadlock", "", locks(facts, "L0", "X2"))]
    assert sorted(report["findings"][0]["threads"]) == sorted(facts["deep"] + facts["inverted"])
    assert report["stats"]["edges_seen"] == 55 + 3 * 11 + 1
    assert report["stats"]["events_lost"]["edge_map_full"] == 0


def test_c11_mtx(ig_daemon, program):
    report, facts = traced(ig_daemon, program("c11"))
    assert summary(report) == [("potential-deadlock", "", locks(facts, "A", "B"))]


@pytest.mark.parametrize("flags", [("-O0", "-g", "-fno-omit-frame-pointer"), OPTIMIZED],
                         ids=["frame-pointers", "optimized-no-frame-pointers"])
def test_cxx_std_mutex_stacks_name_the_calling_functions(ig_daemon, program, flags):
    report, facts = traced(ig_daemon, program("cxx_mutex", flags))
    assert summary(report) == [("potential-deadlock", "", locks(facts, "A", "B"))]
    by_thread = {e["tid"]: e for e in report["findings"][0]["edges"]}

    def functions(frames):
        return " ".join(f["function"] or "" for f in frames)

    forward, backward = by_thread[facts["forward"][0]], by_thread[facts["backward"][0]]
    assert "transfer_forward" in functions(forward["to_stack"])
    assert "transfer_forward" in functions(forward["from_stack"])
    assert "transfer_backward" in functions(backward["to_stack"])
    if flags == OPTIMIZED:
        # no frame pointers: the calling site (first frame) is what names the function
        assert "transfer_forward" in (forward["to_stack"][0]["function"] or "")
