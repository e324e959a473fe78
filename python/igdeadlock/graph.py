"""Lock-order analysis: one lock-order graph per process, its cycles, and what they mean.

Pure and deterministic: no I/O, no gRPC. Input is :class:`igdeadlock.decode.LockEdge`
records; output is :class:`Cycle` findings.

A cycle in the lock-order graph is only a deadlock if the threads that made its
edges could all be blocked at once. For a cycle L1 -> L2 -> ... -> Lk -> L1 we
look for one observation ("evidence") per edge such that:

* the threads are pairwise distinct (one thread cannot wait in two places);
* no lock is held by two of them in conflicting modes (a common "gate" lock
  serialises their critical sections);
* every requested lock conflicts with the mode its holder holds it in
  (read-read does not block with glibc's default, reader-preferring rwlocks);
* no request has a deadline (a timed wait gives up on its own).

A cycle that satisfies all of them is a ``potential-deadlock``. One that fails
only some of them is reported with the reason it is not a deadlock, and a
cycle made by one thread alone is a ``single-thread-inversion``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Deque, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import networkx as nx

from igdeadlock.decode import BlockedThread, LockEdge, ProcessExit

LockId = Tuple[int, int]  # (address, generation): a destroyed lock's address is a new lock

WRITE, READ = 0, 1
BLOCKING, TRY, TIMED = 0, 1, 2

POTENTIAL_DEADLOCK = "potential-deadlock"
SINGLE_THREAD_INVERSION = "single-thread-inversion"
SUPPRESSED_GATE_LOCK = "gate-lock"
SUPPRESSED_READ_READ = "read-read"
SUPPRESSED_TIMED_LOCK = "timed-lock"

MAX_CYCLE_LENGTH = 16  # longest cycle looked for (TSan stops at 20)
MAX_CYCLES_PER_COMPONENT = 2000  # candidate cycles examined per strongly connected component
MAX_EVIDENCE_PER_EDGE = 256
MAX_ASSIGNMENT_STEPS = 20000  # backtracking budget per cycle and constraint set
MAX_REMEMBERED_EXITS = 65536  # exits remembered for edges that arrive after them


@dataclass(frozen=True, order=True)
class ProcessKey:
    pid: int
    start: int  # start time of the process: tells a reused pid apart


@dataclass(frozen=True)
class Evidence:
    """One observation of an edge: a thread holding ``held`` requested the target lock."""

    tid: int
    comm: str
    from_mode: int
    to_mode: int
    to_how: int
    held: FrozenSet[Tuple[LockId, int]]  # every lock held then (source included), with its mode
    from_site: int
    to_site: int


@dataclass(frozen=True)
class CycleStep:
    """``evidence.tid`` holds ``from_lock`` and requests ``to_lock``."""

    from_lock: LockId
    to_lock: LockId
    evidence: Evidence


@dataclass(frozen=True)
class Cycle:
    process: ProcessKey
    comm: str
    mntns_id: int
    kind: str
    suppressed: Optional[str]
    steps: Tuple[CycleStep, ...]
    gate_locks: Tuple[LockId, ...] = ()
    lock_kinds: Tuple[int, ...] = ()  # LOCK_KIND_* of each lock, in cycle order

    @property
    def locks(self) -> Tuple[LockId, ...]:
        return tuple(step.from_lock for step in self.steps)

    @property
    def threads(self) -> Tuple[int, ...]:
        seen: List[int] = []
        for step in self.steps:
            if step.evidence.tid not in seen:
                seen.append(step.evidence.tid)
        return tuple(seen)

    @property
    def key(self) -> Tuple[ProcessKey, Tuple[LockId, ...]]:
        return (self.process, self.locks)


def _evidence_of(record: LockEdge) -> Evidence:
    held = frozenset(((h.lock, h.gen), h.mode) for h in record.held)
    return Evidence(
        tid=record.tid,
        comm=record.comm,
        from_mode=record.from_mode,
        to_mode=record.to_mode,
        to_how=record.to_how,
        held=held,
        from_site=record.from_site,
        to_site=record.to_site,
    )


def _conflicts(mode_a: int, mode_b: int) -> bool:
    """Two holders (or a holder and a requester) exclude each other."""
    return mode_a == WRITE or mode_b == WRITE


@dataclass
class ProcessGraph:
    """The lock-order graph of one process."""

    key: ProcessKey
    comm: str = ""
    mntns_id: int = 0
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    evidence_dropped: int = 0

    def add(self, record: LockEdge) -> bool:
        """Add one edge observation; True if it taught us something new."""
        if record.comm:
            self.comm = record.comm
        self.mntns_id = record.mntns_id or self.mntns_id
        source = (record.from_lock, record.from_gen)
        target = (record.to_lock, record.to_gen)
        if source == target:
            return False
        for node, kind in ((source, record.from_kind), (target, record.to_kind)):
            if node not in self.graph:
                self.graph.add_node(node, kind=kind)
        data = self.graph.get_edge_data(source, target)
        if data is None:
            self.graph.add_edge(source, target, evidence={})
            data = self.graph[source][target]
        evidence = _evidence_of(record)
        bucket: Dict[Tuple, Evidence] = data["evidence"]
        identity = (evidence.tid, evidence.from_mode, evidence.to_mode, evidence.to_how, evidence.held)
        if identity in bucket:
            return False
        if len(bucket) >= MAX_EVIDENCE_PER_EDGE:
            self.evidence_dropped += 1
            return False
        bucket[identity] = evidence
        return True

    @property
    def edge_count(self) -> int:
        return self.graph.number_of_edges()

    @property
    def lock_count(self) -> int:
        return self.graph.number_of_nodes()

    def evidence(self, source: LockId, target: LockId) -> List[Evidence]:
        return list(self.graph[source][target]["evidence"].values())

    def find_cycles(self) -> List[Cycle]:
        """Every classified cycle, at most one per set of locks, in a stable order."""
        found: Dict[Tuple[LockId, ...], Cycle] = {}
        for component in _components(self.graph):
            sub = self.graph.subgraph(component)
            for nodes in islice(nx.simple_cycles(sub, length_bound=MAX_CYCLE_LENGTH), MAX_CYCLES_PER_COMPONENT):
                ring = _rotate(tuple(nodes))
                if ring in found:
                    continue
                cycle = self.classify(ring)
                if cycle is not None:
                    found[ring] = cycle
        return [found[ring] for ring in sorted(found)]

    def classify(self, ring: Sequence[LockId]) -> Optional[Cycle]:
        """What the cycle ``ring[0] -> ring[1] -> ... -> ring[0]`` means, or None."""
        pairs = [(ring[i], ring[(i + 1) % len(ring)]) for i in range(len(ring))]
        options = [self.evidence(a, b) for a, b in pairs]

        def build(kind: str, suppressed: Optional[str], chosen: List[Evidence], gates: Tuple[LockId, ...] = ()) -> Cycle:
            steps = tuple(CycleStep(a, b, ev) for (a, b), ev in zip(pairs, chosen))
            kinds = tuple(self.graph.nodes[lock].get("kind", 0) for lock in ring)
            return Cycle(self.key, self.comm, self.mntns_id, kind, suppressed, steps, gates, kinds)

        chosen = _assign(options, distinct=True, gate_free=True, blocking=True, no_deadline=True)
        if chosen is not None:
            return build(POTENTIAL_DEADLOCK, None, chosen)
        chosen = _assign(options, distinct=True, gate_free=False, blocking=True, no_deadline=True)
        if chosen is not None:
            return build(POTENTIAL_DEADLOCK, SUPPRESSED_GATE_LOCK, chosen, _gate_locks(chosen))
        chosen = _assign(options, distinct=True, gate_free=True, blocking=False, no_deadline=True)
        if chosen is None:
            chosen = _assign(options, distinct=True, gate_free=False, blocking=False, no_deadline=True)
        if chosen is not None:
            return build(POTENTIAL_DEADLOCK, SUPPRESSED_READ_READ, chosen)
        chosen = _assign(options, distinct=True, gate_free=False, blocking=False, no_deadline=False)
        if chosen is not None:
            return build(POTENTIAL_DEADLOCK, SUPPRESSED_TIMED_LOCK, chosen)
        chosen = _assign(options, same_thread=True, blocking=True, no_deadline=True)
        if chosen is not None:
            return build(SINGLE_THREAD_INVERSION, None, chosen)
        chosen = _assign(options, same_thread=True, blocking=False, no_deadline=True)
        if chosen is not None:
            return build(SINGLE_THREAD_INVERSION, SUPPRESSED_READ_READ, chosen)
        chosen = _assign(options, same_thread=True, blocking=False, no_deadline=False)
        if chosen is not None:
            return build(SINGLE_THREAD_INVERSION, SUPPRESSED_TIMED_LOCK, chosen)
        return None


def _components(graph: nx.DiGraph) -> List[List[LockId]]:
    """Strongly connected components that can hold a cycle, in a stable order."""
    return sorted(
        (sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1),
        key=lambda c: c[0],
    )


def _rotate(ring: Tuple[LockId, ...]) -> Tuple[LockId, ...]:
    start = ring.index(min(ring))
    return ring[start:] + ring[:start]


def _gate_locks(chosen: Sequence[Evidence]) -> Tuple[LockId, ...]:
    gates: Set[LockId] = set()
    for i, a in enumerate(chosen):
        modes_a = dict(a.held)
        for b in chosen[i + 1:]:
            for lock, mode in b.held:
                if lock in modes_a and _conflicts(modes_a[lock], mode):
                    gates.add(lock)
    return tuple(sorted(gates))


def _assign(
    options: Sequence[Sequence[Evidence]],
    *,
    distinct: bool = False,
    same_thread: bool = False,
    gate_free: bool = False,
    blocking: bool = False,
    no_deadline: bool = False,
) -> Optional[List[Evidence]]:
    """Pick one evidence per edge satisfying the constraints (backtracking, bounded)."""
    n = len(options)
    if any(not o for o in options):
        return None
    if no_deadline:
        options = [[e for e in o if e.to_how != TIMED] for o in options]
        if any(not o for o in options):
            return None
    chosen: List[Optional[Evidence]] = [None] * n
    budget = [MAX_ASSIGNMENT_STEPS]

    def compatible(i: int, ev: Evidence) -> bool:
        # junctions with already chosen neighbours: step i requests what step i+1 holds
        prev, nxt = chosen[(i - 1) % n], chosen[(i + 1) % n]
        if blocking:
            if nxt is not None and not _conflicts(ev.to_mode, nxt.from_mode):
                return False
            if prev is not None and not _conflicts(prev.to_mode, ev.from_mode):
                return False
        for j, other in enumerate(chosen):
            if other is None or j == i:
                continue
            if distinct and other.tid == ev.tid:
                return False
            if same_thread and other.tid != ev.tid:
                return False
            if gate_free:
                modes = dict(other.held)
                for lock, mode in ev.held:
                    if lock in modes and _conflicts(modes[lock], mode):
                        return False
        return True

    def search(i: int) -> bool:
        if i == n:
            return True
        for ev in options[i]:
            budget[0] -= 1
            if budget[0] < 0:
                return False
            if compatible(i, ev):
                chosen[i] = ev
                if search(i + 1):
                    return True
                chosen[i] = None
        return False

    if not search(0):
        return None
    return [ev for ev in chosen if ev is not None]


@dataclass
class StoreStats:
    edges_seen: int = 0
    processes_seen: int = 0
    processes_exited: int = 0


class LockGraphStore:
    """Lock-order graphs of every traced process, and the findings made from them.

    Findings outlive their process: a graph is analysed once more after its
    process exits (its last edges may arrive after the exit event) and then
    dropped.
    """

    def __init__(self, keep: Optional[Callable[[LockEdge], bool]] = None) -> None:
        self.graphs: Dict[ProcessKey, ProcessGraph] = {}
        self.findings: Dict[Tuple[ProcessKey, Tuple[LockId, ...]], Cycle] = {}
        self.stats = StoreStats()
        self._dirty: Set[ProcessKey] = set()
        self._exited: Set[ProcessKey] = set()  # to drop after the next analysis
        self._gone: Set[ProcessKey] = set()  # processes known to have exited
        self._gone_order: Deque[ProcessKey] = deque()
        self._keep = keep  # which records to analyse (default: all)

    def add_edge(self, record: LockEdge) -> None:
        if self._keep is not None and not self._keep(record):
            return
        key = ProcessKey(record.pid, record.process_start)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = ProcessGraph(key)
            self.stats.processes_seen += 1
            if key in self._gone:
                self._exited.add(key)  # its edges came after its exit: analyse once, then drop
        self.stats.edges_seen += 1
        if graph.add(record):
            self._dirty.add(key)

    def process_exited(self, record: ProcessExit) -> None:
        key = ProcessKey(record.pid, record.process_start)
        if key in self.graphs:
            self._exited.add(key)
        if key not in self._gone:
            self._gone.add(key)
            self._gone_order.append(key)
            if len(self._gone_order) > MAX_REMEMBERED_EXITS:
                self._gone.discard(self._gone_order.popleft())

    def graph_of(self, pid: int) -> Optional[ProcessGraph]:
        for key, graph in self.graphs.items():
            if key.pid == pid:
                return graph
        return None

    def analyse(self) -> List[Cycle]:
        """Look for cycles in graphs that changed; returns findings not seen before.

        Call it after each fetch of the edges: that is also when graphs of
        exited processes are dropped.
        """
        new: List[Cycle] = []
        for key in sorted(self._dirty):
            graph = self.graphs.get(key)
            if graph is None:
                continue
            for cycle in graph.find_cycles():
                if cycle.key not in self.findings:
                    self.findings[cycle.key] = cycle
                    new.append(cycle)
        self._dirty.clear()
        for key in sorted(self._exited):
            if self.graphs.pop(key, None) is not None:
                self.stats.processes_exited += 1
        self._exited.clear()
        return new

    def all_findings(self) -> List[Cycle]:
        return sorted(self.findings.values(), key=lambda c: (c.process, c.locks))


# --- actual deadlocks: who waits for whom, right now ---------------------------

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

    def __init__(self, keep: Optional[Callable[[object], bool]] = None) -> None:
        self.blocked: Dict[int, BlockedThread] = {}
        self.deadlocks: Dict[Tuple, Deadlock] = {}
        self._candidates: Set[Tuple] = set()
        self._keep = keep

    def thread_blocked(self, record: BlockedThread) -> None:
        if self._keep is None or self._keep(record):
            self.blocked[record.tid] = record

    def thread_resumed(self, tid: int) -> None:
        self.blocked.pop(tid, None)

    def process_exited(self, pid: int) -> None:
        for tid in [t for t, b in self.blocked.items() if b.pid == pid]:
            del self.blocked[tid]

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
                holds = {(h.lock, h.gen): h.mode for h in holder.held}
                if target in holds and _conflicts(holds[target], b.mode):
                    graph.add_edge(b.tid, holder.tid)
            if b.owner_tid in waiting:
                graph.add_edge(b.tid, b.owner_tid)
        for cycle in islice(nx.simple_cycles(graph, length_bound=MAX_CYCLE_LENGTH), MAX_CYCLES_PER_COMPONENT):
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
