"""Hand-made records for the unit tests of the analysis (no kernel involved)."""

from __future__ import annotations

from typing import Iterable, Sequence, Tuple

from igdeadlock.analysis.lockorder import ProcessGraph, ProcessKey
from igdeadlock.records import BlockedThread, HeldLock, LockEdge

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


def summary(graph: ProcessGraph) -> list:
    """(locks, kind, suppressed) of every cycle found, sorted."""
    return sorted((tuple(lock for lock, _ in c.locks), c.kind, c.suppressed) for c in graph.find_cycles())


def blocked(tid: int, waits_for: int, holds: Sequence[Tuple[int, int]], mode: int = W, how: int = 0,
            owner: int = 0, pid: int = PID, kind: int = 0, threads: int = 0, observed: int = 20,
            frames: Tuple[int, ...] = (), switches: int = 0) -> BlockedThread:
    return BlockedThread(pid=pid, tid=tid, comm="t", mntns_id=1, process_start=1, session_id=pid, lock=waits_for,
                         gen=0, mode=mode, kind=kind, how=how, site=0, since=10, observed=observed, owner_tid=owner,
                         held=tuple(HeldLock(lock, 0, m) for lock, m in holds), process_threads=threads,
                         wait_frames=frames, switches=switches)
