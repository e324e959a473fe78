"""Lock-order analysis on hand-made edge records (no kernel involved)."""

from __future__ import annotations

from typing import Iterable, Sequence, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from igdeadlock.decode import HeldLock, LockEdge, ProcessExit
from igdeadlock.graph import (
    POTENTIAL_DEADLOCK,
    SINGLE_THREAD_INVERSION,
    SUPPRESSED_GATE_LOCK,
    SUPPRESSED_READ_READ,
    SUPPRESSED_TIMED_LOCK,
    LockGraphStore,
    ProcessGraph,
    ProcessKey,
    _assign,
    _distinct_threads_possible,
)

W, R = 0, 1
PID = 100


def acquire(tid: int, held: Sequence[Tuple[int, int]], lock: int, mode: int = W, how: int = 0,
            pid: int = PID, start: int = 1) -> Iterable[LockEdge]:
    """The edges a thread makes requesting `lock` while holding `held` [(lock, mode)]."""
    held_locks = tuple(HeldLock(h, 0, m) for h, m in held)
    for h, m in held:
        yield LockEdge(pid=pid, tid=tid, comm="t", mntns_id=1, process_start=start, session_id=pid,
                       from_lock=h, from_gen=0, from_mode=m, from_kind=0, from_site=0, to_lock=lock, to_gen=0,
                       to_mode=mode, to_kind=0, to_how=how, to_site=0, held=held_locks)


def graph_of(*edge_groups: Iterable[LockEdge]) -> ProcessGraph:
    graph = ProcessGraph(ProcessKey(PID, 1))
    for group in edge_groups:
        for edge in group:
            graph.add(edge)
    return graph


def summary(graph: ProcessGraph):
    return sorted((tuple(l for l, _ in c.locks), c.kind, c.suppressed) for c in graph.find_cycles())


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
    (cycle,) = [c for c in g.find_cycles() if {l for l, _ in c.locks} == {0xA, 0xB}]
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
    assert store.graph_of(PID) is None
    assert len(store.all_findings()) == 1
    assert store.stats.processes_exited == 1


def test_exit_seen_before_the_last_edges_still_analyses_then_drops():
    store = LockGraphStore()
    store.process_exited(ProcessExit(PID, 1, 1, "t"))
    for edge in [*acquire(1, [(0xA, W)], 0xB), *acquire(2, [(0xB, W)], 0xA)]:
        store.add_edge(edge)
    assert len(store.analyse()) == 1
    assert store.graph_of(PID) is None


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


# --- actual deadlocks ------------------------------------------------------------

from igdeadlock.decode import BlockedThread  # noqa: E402
from igdeadlock.graph import WaitForTracker, find_wait_cycles  # noqa: E402


def blocked(tid: int, waits_for: int, holds: Sequence[Tuple[int, int]], mode: int = W, how: int = 0,
            owner: int = 0, pid: int = PID) -> BlockedThread:
    return BlockedThread(pid=pid, tid=tid, comm="t", mntns_id=1, process_start=1, session_id=pid, lock=waits_for,
                         gen=0, mode=mode, kind=0, how=how, site=0, since=10, observed=20, owner_tid=owner,
                         held=tuple(HeldLock(l, 0, m) for l, m in holds))


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


# --- scale: witnesses, not enumeration -------------------------------------------

import time  # noqa: E402

from igdeadlock.graph import strongly_connected  # noqa: E402


def test_strongly_connected_components():
    succ = {1: {2: 0}, 2: {3: 0}, 3: {1: 0, 4: 0}, 4: {5: 0}, 5: {4: 0}, 6: {1: 0}}
    component = strongly_connected(succ)
    assert component[1] == component[2] == component[3]
    assert component[4] == component[5] != component[1]
    assert 6 not in component


def test_dense_graph_gets_witnesses_without_enumerating_cycles():
    # every thread i holds lock a and requests lock b for all a != b among 14 locks:
    # billions of simple cycles, one witness per pair of locks suffices
    locks = range(14)
    edges = [e for a in locks for b in locks if a != b for e in acquire(100 + a * 20 + b, [(a, W)], b)]
    g = graph_of(edges)
    started = time.monotonic()
    cycles = g.find_cycles()
    assert time.monotonic() - started < 10  # generous: a regression would take hours
    assert cycles and all(c.kind == POTENTIAL_DEADLOCK and len(c.steps) == 2 for c in cycles)
    assert len(cycles) == 14 * 13 // 2


def test_only_changed_edges_are_analysed_again():
    g = graph_of(acquire(1, [(0xA, W)], 0xB), acquire(2, [(0xB, W)], 0xA))
    assert len(g.find_cycles()) == 1
    assert g.find_cycles() == []  # nothing changed
    for edge in acquire(3, [(0xB, W)], 0xC):
        g.add(edge)
    assert g.find_cycles() == []  # the new edge closes no cycle


def test_big_graphs_skip_the_component_pass_and_keep_edges_a_cut_search_missed(monkeypatch):
    import igdeadlock.graph as graph_module

    monkeypatch.setattr(graph_module, "SCC_EDGE_LIMIT", 1)  # every graph counts as big
    g = graph_of(acquire(1, [(0xA, W)], 0xB), acquire(2, [(0xB, W)], 0xA), acquire(3, [(0xC, W)], 0xD))
    assert summary(g) == [((0xA, 0xB), POTENTIAL_DEADLOCK, None)]
    ring = [0xA, 0xB, 0xC, 0xD, 0xE]
    g = graph_of(*(acquire(i, [(lock, W)], ring[(i + 1) % 5]) for i, lock in enumerate(ring)))
    assert g.find_cycles(budget=2) == []  # the search through the first edge was cut short...
    assert len(g.dirty) == 5  # ...so every edge waits for the next analysis
    assert summary(g) == [(tuple(ring), POTENTIAL_DEADLOCK, None)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sets(st.integers(1, 6), min_size=1, max_size=4), min_size=2, max_size=7))
def test_distinct_thread_precheck_agrees_with_the_search(threads):
    """The exact matching that lets classify skip searches says yes exactly when
    the backtracking search finds one distinct thread per step."""
    options = [[LockEdge(PID, tid, "t", 1, 1, PID, 0, 0, W, 0, 0, 0, 0, W, 0, 0, 0, ()) for tid in sorted(step)]
               for step in threads]
    assert _distinct_threads_possible(threads) == (_assign(options, distinct=True) is not None)


def test_a_cycle_no_distinct_threads_nor_one_thread_can_close_is_no_finding():
    # threads 1 and 2 made A->B and B->C, thread 1 alone C->A: three steps, two threads
    graph = graph_of(acquire(1, [(0xA, W)], 0xB), acquire(2, [(0xB, W)], 0xC), acquire(1, [(0xC, W)], 0xA))
    assert graph.classify(((0xA, 0), (0xB, 0), (0xC, 0))) is None
    assert graph.find_cycles() == []
