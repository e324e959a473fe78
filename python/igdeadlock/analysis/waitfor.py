"""Actual deadlocks: who waits for whom, right now.

Threads the gadget saw blocked in a futex wait inside a lock they acquire, with
the locks they hold: per process, a wait-for graph (thread -> thread holding
the lock it waits for). A cycle still there at the next fetch is a deadlock.
Pure: no I/O, no gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import islice
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

import networkx as nx

from igdeadlock.analysis.lockorder import MAX_CYCLE_LENGTH, TIMED, LockId, ProcessKey, _conflicts
from igdeadlock.records import BlockedThread

MAX_WAIT_CYCLES = 2000  # wait-for cycles examined per process

ACTUAL_DEADLOCK = "actual-deadlock"


@dataclass(frozen=True)
class WaitStep:
    """Thread ``tid`` holds ``holds`` (wanted by the previous thread) and waits for ``waits_for``."""

    tid: int
    comm: str
    holds: LockId
    waits_for: LockId
    mode: int
    kind: int
    since: int  # boot time (ns) the wait started
    site: int  # where the thread requested the lock it waits for
    owner_tid: int  # glibc's owner of waits_for, 0 if unknown


@dataclass(frozen=True)
class Deadlock:
    """Threads blocked in a cycle: each waits for a lock the next one holds."""

    process: ProcessKey
    comm: str
    mntns_id: int
    steps: Tuple[WaitStep, ...]
    ended: int = 0  # boot time (ns) its process exited, 0 while it runs (or unknown)

    @property
    def locks(self) -> Tuple[LockId, ...]:
        return tuple(step.waits_for for step in self.steps)

    @property
    def threads(self) -> Tuple[int, ...]:
        return tuple(step.tid for step in self.steps)

    @property
    def key(self) -> Tuple[ProcessKey, FrozenSet[Tuple[int, LockId]]]:
        return (self.process, frozenset((s.tid, s.waits_for) for s in self.steps))


class WaitForTracker:
    """Blocked threads and their wait-for graph; reports cycles that persist.

    A thread is blocked from the fetch that reports it until a ``resumed``
    event (or its process's exit). A cycle must be seen at two consecutive
    fetches before it is reported: contention that resolves never is.
    """

    def __init__(self, keep_session: Optional[Callable[[int], bool]] = None) -> None:
        self.blocked: Dict[int, BlockedThread] = {}
        self.deadlocks: Dict[Tuple, Deadlock] = {}
        self._candidates: Set[Tuple] = set()
        self.keep_session = keep_session

    def thread_blocked(self, record: BlockedThread) -> None:
        if self.keep_session is None or self.keep_session(record.session_id):
            self.blocked[record.tid] = record

    def thread_resumed(self, tid: int) -> None:
        self.blocked.pop(tid, None)

    def process_exited(self, pid: int, start: int = 0, exited: int = 0) -> None:
        """The process is gone: its threads wait no more, and its deadlocks
        lasted until ``exited`` (boot-clock ns, 0 if unknown)."""
        for tid in [t for t, b in self.blocked.items() if b.pid == pid]:
            del self.blocked[tid]
        if exited:
            for key, deadlock in self.deadlocks.items():
                if deadlock.process == (pid, start) and not deadlock.ended:
                    self.deadlocks[key] = replace(deadlock, ended=exited)

    def tick(self) -> List[Deadlock]:
        """After each fetch of blocked threads: newly confirmed deadlocks."""
        current = {d.key: d for d in find_wait_cycles(self.blocked.values())}
        new = []
        for key, deadlock in sorted(current.items(), key=lambda kv: repr(kv[0])):
            if key in self._candidates and key not in self.deadlocks:
                self.deadlocks[key] = deadlock
                new.append(deadlock)
        self._candidates = set(current)
        return new


def find_wait_cycles(blocked: Iterable[BlockedThread]) -> List[Deadlock]:
    """Cycles of the wait-for graph: thread -> the threads holding what it waits for."""
    by_process: Dict[ProcessKey, List[BlockedThread]] = {}
    for b in blocked:
        by_process.setdefault(ProcessKey(b.pid, b.process_start), []).append(b)
    found: List[Deadlock] = []
    for process, threads in sorted(by_process.items()):
        graph = nx.DiGraph()
        waiting = {b.tid: b for b in threads}
        for b in threads:
            if b.how == TIMED:
                continue  # a wait with a deadline ends by itself
            target = (b.lock, b.gen)
            for holder in threads:
                holds = {(lock, gen): mode for lock, gen, mode in holder.held}
                if target in holds and _conflicts(holds[target], b.mode):
                    graph.add_edge(b.tid, holder.tid)
            if b.owner_tid in waiting:
                graph.add_edge(b.tid, b.owner_tid)
        for cycle in islice(nx.simple_cycles(graph, length_bound=MAX_CYCLE_LENGTH), MAX_WAIT_CYCLES):
            start = cycle.index(min(cycle))
            ring = cycle[start:] + cycle[:start]
            steps = []
            for i, tid in enumerate(ring):
                b = waiting[tid]
                previous = waiting[ring[i - 1]]
                steps.append(WaitStep(tid, b.comm, (previous.lock, previous.gen), (b.lock, b.gen), b.mode, b.kind,
                                      b.since, b.site, b.owner_tid))
            first = waiting[ring[0]]
            found.append(Deadlock(process, first.comm, first.mntns_id, tuple(steps)))
    return found
