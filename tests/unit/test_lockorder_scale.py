"""Lock-order analysis at scale: witnesses, not enumeration; budgets that hold."""

from __future__ import annotations

import time

from builders import PID, W, acquire, graph_of, summary
from hypothesis import given, settings
from hypothesis import strategies as st

from igdeadlock.analysis.lockorder import POTENTIAL_DEADLOCK, _assign, _distinct_threads_possible, strongly_connected
from igdeadlock.records import LockEdge


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
    import igdeadlock.analysis.lockorder as graph_module

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


def test_a_big_graph_waits_for_its_components_but_never_skips_an_edge(monkeypatch):
    import igdeadlock.analysis.lockorder as lockorder

    monkeypatch.setattr(lockorder, "SCC_EDGE_LIMIT", 1)  # every graph counts as big
    monkeypatch.setattr(lockorder, "SCC_REGROWTH", 100.0)  # and growth never suffices
    g = graph_of(acquire(1, [(0xA, W)], 0xB))
    assert g.find_cycles() == [] and not g.has_work
    for edge in acquire(2, [(0xB, W)], 0xA):  # closes a cycle the old components do not know
        g.add(edge)
    assert g.find_cycles() == [] and g.has_work  # grew: the edge waits for the components
    assert summary(g) == [((0xA, 0xB), POTENTIAL_DEADLOCK, None)]  # stopped growing: computed
    assert not g.has_work
