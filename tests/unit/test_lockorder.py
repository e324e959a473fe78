"""Lock-order analysis on hand-made edge records: what a cycle means."""

from __future__ import annotations

import random

import pytest
from builders import PID, R, W, acquire, graph_of, summary

from igdeadlock.analysis.lockorder import (
    EXIT_GRACE_ANALYSES,
    POTENTIAL_DEADLOCK,
    SINGLE_THREAD_INVERSION,
    SUPPRESSED_GATE_LOCK,
    SUPPRESSED_READ_READ,
    SUPPRESSED_TIMED_LOCK,
    LockGraphStore,
    ProcessKey,
)
from igdeadlock.records import ProcessExit


def test_two_threads_opposite_order_is_a_potential_deadlock():
    g = graph_of(acquire(1, [(0xA, W)], 0xB), acquire(2, [(0xB, W)], 0xA))
    (cycle,) = g.find_cycles()
    assert (cycle.kind, cycle.suppressed) == (POTENTIAL_DEADLOCK, None)
    assert cycle.locks == ((0xA, 0), (0xB, 0))
    assert sorted(cycle.threads) == [1, 2]


def test_one_thread_opposite_order_is_a_single_thread_inversion():
    g = graph_of(acquire(1, [(0xA, W)], 0xB), acquire(1, [(0xB, W)], 0xA))
    assert summary(g) == [((0xA, 0xB), SINGLE_THREAD_INVERSION, None)]


def test_second_thread_turns_single_thread_inversion_into_potential_deadlock():
    g = graph_of(acquire(1, [(0xA, W)], 0xB), acquire(1, [(0xB, W)], 0xA), acquire(2, [(0xB, W)], 0xA))
    assert summary(g) == [((0xA, 0xB), POTENTIAL_DEADLOCK, None)]


def test_common_gate_lock_suppresses_the_cycle():
    g = graph_of(acquire(1, [(0x6, W), (0xA, W)], 0xB), acquire(2, [(0x6, W), (0xB, W)], 0xA))
    (cycle,) = [c for c in g.find_cycles() if {lock for lock, _ in c.locks} == {0xA, 0xB}]
    assert cycle.suppressed == SUPPRESSED_GATE_LOCK
    assert cycle.gate_locks == ((0x6, 0),)


def test_gate_held_for_reading_by_both_does_not_protect():
    g = graph_of(acquire(1, [(0x6, R), (0xA, W)], 0xB), acquire(2, [(0x6, R), (0xB, W)], 0xA))
    assert ((0xA, 0xB), POTENTIAL_DEADLOCK, None) in summary(g)


def test_read_read_cycle_is_suppressed_but_write_read_is_not():
    read_read = graph_of(acquire(1, [(0xA, R)], 0xB, R), acquire(2, [(0xB, R)], 0xA, R))
    assert summary(read_read) == [((0xA, 0xB), POTENTIAL_DEADLOCK, SUPPRESSED_READ_READ)]
    # T1 holds A for reading and wants B for writing; T2 holds B for reading and wants A for writing
    write_read = graph_of(acquire(1, [(0xA, R)], 0xB, W), acquire(2, [(0xB, R)], 0xA, W))
    assert summary(write_read) == [((0xA, 0xB), POTENTIAL_DEADLOCK, None)]


def test_timed_request_closing_the_cycle_is_suppressed():
    g = graph_of(acquire(1, [(0xA, W)], 0xB), acquire(2, [(0xB, W)], 0xA, how=2))
    assert summary(g) == [((0xA, 0xB), POTENTIAL_DEADLOCK, SUPPRESSED_TIMED_LOCK)]


def test_three_lock_ring_needs_three_distinct_threads():
    ring = graph_of(acquire(1, [(0xA, W)], 0xB), acquire(2, [(0xB, W)], 0xC), acquire(3, [(0xC, W)], 0xA))
    assert summary(ring) == [((0xA, 0xB, 0xC), POTENTIAL_DEADLOCK, None)]


def test_chain_from_one_thread_that_released_the_first_lock_is_not_a_cycle():
    # google/sanitizers#814: T1 A->B, then (A released) B->C; T2 C->A. T1 never holds A while waiting for C.
    g = graph_of(acquire(1, [(0xA, W)], 0xB), acquire(1, [(0xB, W)], 0xC), acquire(2, [(0xC, W)], 0xA))
    assert summary(g) == []


def test_nested_holder_closes_a_shorter_cycle():
    # T1 holds A and B and wants C; T2 holds C and wants A: the real cycle is A -> C -> A.
    g = graph_of(acquire(1, [(0xA, W)], 0xB), acquire(1, [(0xA, W), (0xB, W)], 0xC), acquire(2, [(0xC, W)], 0xA))
    assert summary(g) == [((0xA, 0xC), POTENTIAL_DEADLOCK, None)]


def test_store_drops_graph_after_exit_but_keeps_the_finding():
    store = LockGraphStore()
    for edge in [*acquire(1, [(0xA, W)], 0xB), *acquire(2, [(0xB, W)], 0xA)]:
        store.add_edge(edge)
    store.process_exited(ProcessExit(PID, 1, 1, "t"))
    new = store.analyse()
    assert len(new) == 1
    assert store.graph_of(PID) is not None  # kept for the edges the next fetch may bring
    for edge in acquire(3, [(0xB, W)], 0xC):  # a late edge joins the same process
        store.add_edge(edge)
    assert store.graph_of(PID).edge_count == 3
    assert store.analyse() == []
    assert store.graph_of(PID) is None  # complete, and the grace has passed: dropped
    assert len(store.all_findings()) == 1
    assert (store.stats.processes_seen, store.stats.processes_exited) == (1, 1)


def test_exit_seen_before_the_last_edges_still_analyses_then_drops():
    store = LockGraphStore()
    store.process_exited(ProcessExit(PID, 1, 1, "t"))
    for edge in [*acquire(1, [(0xA, W)], 0xB), *acquire(2, [(0xB, W)], 0xA)]:
        store.add_edge(edge)
    assert len(store.analyse()) == 1
    store.analyse()
    assert store.graph_of(PID) is None


def test_an_exit_before_any_edge_still_counts_the_process_once():
    store = LockGraphStore()
    store.process_exited(ProcessExit(PID, 1, 1, "t"))
    store.analyse()  # the exit came first (a ring buffer); the edges come with the next fetch
    for edge in [*acquire(1, [(0xA, W)], 0xB), *acquire(2, [(0xB, W)], 0xA)]:
        store.add_edge(edge)
    assert len(store.analyse()) == 1
    store.analyse()
    assert store.graph_of(PID) is None
    assert (store.stats.processes_seen, store.stats.processes_exited) == (1, 1)


def test_a_very_late_edge_after_the_drop_is_the_same_process_again():
    store = LockGraphStore()
    for edge in acquire(1, [(0xA, W)], 0xB):
        store.add_edge(edge)
    store.process_exited(ProcessExit(PID, 1, 1, "t"))
    store.analyse()
    store.analyse()
    assert store.graph_of(PID) is None
    for edge in acquire(1, [(0xB, W)], 0xC):
        store.add_edge(edge)
    store.analyse()
    store.analyse()
    assert store.graph_of(PID) is None
    assert (store.stats.processes_seen, store.stats.processes_exited) == (1, 1)


def test_an_exited_process_is_kept_until_its_analysis_is_complete():
    store = LockGraphStore()
    ring = list(range(1, 41))  # a 40-lock ring across 40 threads: a long search
    for i, lock in enumerate(ring):
        for edge in acquire(100 + i, [(lock, W)], ring[(i + 1) % len(ring)]):
            store.add_edge(edge)
    store.process_exited(ProcessExit(PID, 1, 1, "t"))
    found = store.analyse(budget=10)  # far too little for one analysis
    analyses = 1
    while store.graph_of(PID) is not None:
        assert store.incomplete() or analyses < 3
        found += store.analyse(budget=10)
        analyses += 1
        assert analyses < 500
    assert [(len(c.locks), c.kind) for c in found] == [(40, POTENTIAL_DEADLOCK)]
    assert store.incomplete() == {}


def test_finish_completes_the_analysis_within_its_time():
    store = LockGraphStore()
    for i in range(60):  # a 60-lock ring
        for edge in acquire(200 + i, [(i + 1, W)], (i + 1) % 60 + 1):
            store.add_edge(edge)
    found = store.finish(seconds=60)
    assert [len(c.locks) for c in found] == [60]
    assert store.incomplete() == {} and store.cut_short() == set()


def test_reused_pid_starts_clean():
    store = LockGraphStore()
    for edge in acquire(1, [(0xA, W)], 0xB, start=1):
        store.add_edge(edge)
    store.process_exited(ProcessExit(PID, 1, 1, "t"))
    store.analyse()
    # a new process with the same pid (other start time) takes the opposite order
    for edge in acquire(2, [(0xB, W)], 0xA, start=2):
        store.add_edge(edge)
    assert store.analyse() == []
    assert store.graph_of(PID).key == ProcessKey(PID, 2)


def test_same_addresses_in_two_processes_are_different_locks():
    store = LockGraphStore()
    for edge in [*acquire(1, [(0xA, W)], 0xB, pid=1), *acquire(2, [(0xB, W)], 0xA, pid=2)]:
        store.add_edge(edge)
    assert store.analyse() == []


def test_observations_beyond_the_cap_are_counted_and_reported():
    from igdeadlock.analysis.collector import Collector
    from igdeadlock.analysis.lockorder import MAX_EVIDENCE_PER_EDGE

    collector = Collector()
    for tid in range(MAX_EVIDENCE_PER_EDGE + 3):  # the same edge made by many threads
        for edge in acquire(tid, [(0xA, W)], 0xB):
            collector.consume(edge)
    collector.store.analyse()
    transport = dict.fromkeys(("server_dropped", "decoder_rejected", "unknown_datasource", "before_gadget_info",
                               "edge_records_batched"), 0)
    assert collector.stats(transport)["evidence_dropped"] == 3
    collector.consume(ProcessExit(PID, 1, 0, ""))
    collector.store.analyse()  # the graph is dropped: what it dropped is still counted
    assert collector.stats(transport)["evidence_dropped"] == 3


def _every_rotation(locks: int) -> list:
    """TSan's deadlock_detector_stress_test, Test19: one thread takes every
    lock, each round starting one further along, holding all it took."""
    edges = []
    for first in range(locks):
        held: list = []
        for j in range(locks):
            lock = 0x1000 + 0x40 * ((first + j) % locks)
            edges += list(acquire(1, held, lock))
            held.append((lock, W))
    return edges


@pytest.mark.parametrize("seed", range(4))
def test_the_same_edges_give_the_same_findings_however_they_arrive(seed):
    """Edges fetched in batches of any size, analysed between them: a cycle
    found before the reverse of one of its edges arrived is a longer one, and
    was kept beside the shorter ones (TSan's Test19 gave 990 findings one run,
    994 the next). Settled on the whole graph, the findings are the pairs."""
    rounds = random.Random(seed)
    edges = _every_rotation(20)
    store = LockGraphStore()
    taken = 0
    while taken < len(edges):
        batch = rounds.randint(1, 60)
        for edge in edges[taken:taken + batch]:
            store.add_edge(edge)
        taken += batch
        store.analyse()
    store.process_exited(ProcessExit(PID, 1, 1, "t"))
    for _ in range(EXIT_GRACE_ANALYSES + 1):
        store.analyse()
    assert store.graph_of(PID) is None  # dropped, settled before
    findings = store.all_findings()
    assert {len(c.locks) for c in findings} == {2} and len(findings) == 20 * 19 // 2
    assert {c.kind for c in findings} == {SINGLE_THREAD_INVERSION}


def test_a_trace_end_settles_the_findings_of_live_processes():
    store = LockGraphStore()
    edges = _every_rotation(8)
    for start in range(0, len(edges), 7):
        for edge in edges[start:start + 7]:
            store.add_edge(edge)
        store.analyse()
    store.finish(10)
    assert store.graph_of(PID) is not None and store.unsettled == set()
    assert sorted(len(c.locks) for c in store.all_findings()) == [2] * 28


def test_a_late_edge_after_the_drop_keeps_the_settled_findings():
    """Edges after a process's graph was settled and dropped make a graph of
    their own: settling that one must not take away the findings of the whole."""
    store = LockGraphStore()
    for edge in [*acquire(1, [(0xA, W)], 0xB), *acquire(2, [(0xB, W)], 0xA)]:
        store.add_edge(edge)
    store.process_exited(ProcessExit(PID, 1, 1, "t"))
    for _ in range(EXIT_GRACE_ANALYSES + 1):
        store.analyse()
    assert store.graph_of(PID) is None and len(store.all_findings()) == 1
    for edge in [*acquire(3, [(0xC, W)], 0xD), *acquire(4, [(0xD, W)], 0xC)]:
        store.add_edge(edge)
    store.finish(10)
    for _ in range(EXIT_GRACE_ANALYSES + 1):
        store.analyse()
    assert sorted(tuple(lock for lock, _ in c.locks) for c in store.all_findings()) == [(0xA, 0xB), (0xC, 0xD)]


def test_settling_keeps_what_a_cycle_means():
    """Settled again, a potential deadlock stays one, with its threads."""
    store = LockGraphStore()
    for edge in [*acquire(1, [(0xA, W)], 0xB), *acquire(2, [(0xB, W)], 0xA), *acquire(1, [(0xA, W)], 0xC)]:
        store.add_edge(edge)
    store.analyse()
    before = [(c.kind, c.suppressed, sorted(c.threads)) for c in store.all_findings()]
    store.finish(10)
    assert [(c.kind, c.suppressed, sorted(c.threads)) for c in store.all_findings()] == before == [
        (POTENTIAL_DEADLOCK, None, [1, 2])]
