"""Lock-order analysis: one lock-order graph per process, its cycles, and what they mean.

Pure and deterministic: no I/O, no gRPC. Input is :class:`igdeadlock.records.LockEdge`
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

import time
from collections import deque
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import (
    TYPE_CHECKING,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from igdeadlock.gadget import Acquire, LockMode
from igdeadlock.records import LockEdge, LockEdgeBatch, ProcessExit

if TYPE_CHECKING:  # networkx takes a third of a second to import: only where it is used
    import networkx as nx

LockId = Tuple[int, int]  # (address, generation): a destroyed lock's address is a new lock

# plain ints: compared in the hot loops of the search
WRITE = int(LockMode.EXCLUSIVE)
TIMED = int(Acquire.TIMED)

POTENTIAL_DEADLOCK = "potential-deadlock"
SINGLE_THREAD_INVERSION = "single-thread-inversion"
SUPPRESSED_GATE_LOCK = "gate-lock"
SUPPRESSED_READ_READ = "read-read"
SUPPRESSED_TIMED_LOCK = "timed-lock"

MAX_CYCLE_LENGTH = 256  # longest cycle looked for (TSan stops at 20; said when reached)
ANALYSIS_BUDGET = 500_000  # graph steps per analysis of one process; the rest waits for the next
MAX_BUDGET_BOOST = 1 << 16  # the most a stalled search's budget is multiplied by
# Components of a big graph are computed again once it grew by this factor (or
# stopped growing): edges they do not yet cover wait for it, never skipped.
SCC_EDGE_LIMIT = 250_000  # up to this many edges, every analysis computes them
SCC_REGROWTH = 1.25
MAX_EVIDENCE_PER_EDGE = 256
MAX_ASSIGNMENT_STEPS = 20000  # backtracking budget per cycle and constraint set
MAX_REMEMBERED_EXITS = 65536  # dropped graphs remembered for edges that arrive after them
EXIT_GRACE_ANALYSES = 2  # an exited process's last edges come with the next fetch
MAX_SETTLING_ANALYSES = 64  # analyses of a whole graph to settle its findings (see settled_cycles)


class ProcessKey(NamedTuple):
    pid: int
    start: int  # start time of the process: tells a reused pid apart


# One observation of an edge is the LockEdge record itself: thread ``tid``,
# holding ``held`` [(lock, gen, mode)], requested the target lock.
Evidence = LockEdge


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


def _conflicts(mode_a: int, mode_b: int) -> bool:
    """Two holders (or a holder and a requester) exclude each other."""
    return mode_a == WRITE or mode_b == WRITE


def held_modes(evidence: Evidence) -> Dict[LockId, int]:
    """The locks held when the edge was made, with the mode each was held in."""
    return {(lock, gen): mode for lock, gen, mode in evidence.held}


def _no_common_lock(a: Evidence, b: Evidence) -> bool:
    """No lock held by both in conflicting modes (that would be a gate lock)."""
    modes = held_modes(a)
    for lock, gen, mode in b.held:
        other = modes.get((lock, gen))
        if other is not None and _conflicts(other, mode):
            return False
    return True


class ProcessGraph:
    """The lock-order graph of one process: (lock, lock) -> evidence.

    Ingest only stores edges (one dictionary entry each); the adjacency that
    the searches walk is extended with the new edges when analysis starts.
    The evidence of an edge is one LockEdge, the pending ``raw`` bytes that
    ``self.decode`` makes it from (see :class:`igdeadlock.records.LockEdgeBatch`),
    a pending ``(decode, raw)`` pair when another decoder made it, or
    ``{identity: LockEdge}`` once the edge was seen in several ways.
    :meth:`to_networkx` gives a networkx view.
    """

    def __init__(self, key: ProcessKey) -> None:
        self.key = key
        self.edges: Dict[Tuple[LockId, LockId], object] = {}  # (source, target) -> evidence
        # one tuple per lock, shared by its edges (a lock is in several): memory per edge
        self.lock_ids: Dict[LockId, LockId] = {}
        self.decode: Optional[Callable[[bytes], LockEdge]] = None  # of pending bytes evidence
        self.succ: Dict[LockId, List[LockId]] = {}  # source -> targets, for the edges indexed so far
        self._indexed = 0  # the first _indexed edges are in succ (edges are never removed)
        self._more: List[Tuple[LockId, LockId]] = []  # known edges that got new evidence
        self._left: Dict[Tuple[LockId, LockId], None] = {}  # edges the last analysis did not reach
        self.evidence_dropped = 0
        self.longest_cut = False  # a search stopped at MAX_CYCLE_LENGTH: a longer cycle may hide
        self._boost = 1  # budget multiplier: doubles while one search needs more than a budget
        self._components: Optional[Dict[LockId, int]] = None  # strongly_connected() of the first...
        self._components_edges = 0  # ...this many edges

    @property
    def edge_count(self) -> int:
        return len(self.edges)

    @property
    def has_work(self) -> bool:
        """Edges or evidence that analysis has not looked at yet."""
        return bool(self._left or self._more or self._indexed < len(self.edges))

    @property
    def dirty(self) -> Dict[Tuple[LockId, LockId], None]:
        """The edges the next analysis looks at, in arrival order."""
        return dict.fromkeys(chain(self._left, islice(self.edges, self._indexed, None), self._more))

    def add(self, record: LockEdge) -> bool:
        """Add one edge observation; True if it taught us something new."""
        source = (record.from_lock, record.from_gen)
        target = (record.to_lock, record.to_gen)
        if source == target:
            return False
        edge = (source, target)
        known = self.edges.get(edge)
        if known is None:
            self.edges[edge] = record  # most edges are seen once: the record itself, no dictionary
            return True
        return self.add_evidence(edge, known, record)

    def add_evidence(self, edge: Tuple[LockId, LockId], known: object, record: LockEdge) -> bool:
        """A known edge seen again: keep the observation if it differs (thread, modes, held locks)."""
        identity = _identity(record)
        if type(known) is not dict:
            first = self._decoded(edge, known)
            if _identity(first) == identity:
                return False
            known = self.edges[edge] = {_identity(first): first}
        if identity in known:  # type: ignore[operator]
            return False
        if len(known) >= MAX_EVIDENCE_PER_EDGE:  # type: ignore[arg-type]
            self.evidence_dropped += 1
            return False
        known[identity] = record  # type: ignore[index]
        self._more.append(edge)
        return True

    def _decoded(self, edge: Tuple[LockId, LockId], evidence: object) -> LockEdge:
        if type(evidence) is bytes:  # pending: decode it once, keep the record
            assert self.decode is not None
            evidence = self.edges[edge] = self.decode(evidence)
        elif type(evidence) is tuple:  # pending, from another decoder
            decode, raw = evidence  # type: ignore[misc]
            evidence = self.edges[edge] = decode(raw)
        return evidence  # type: ignore[return-value]

    def evidence(self, source: LockId, target: LockId) -> List[Evidence]:
        edge = (source, target)
        known = self.edges[edge]
        if type(known) is dict:
            return list(known.values())  # type: ignore[attr-defined]
        return [self._decoded(edge, known)]

    def to_networkx(self) -> nx.DiGraph:
        import networkx as nx

        graph = nx.DiGraph()
        for source, target in self.edges:
            evidence = self.evidence(source, target)
            graph.add_node(source, kind=evidence[0].from_kind)
            graph.add_node(target, kind=evidence[0].to_kind)
            graph.add_edge(source, target, evidence=evidence)
        return graph

    def _index_new_edges(self) -> List[Tuple[LockId, LockId]]:
        """Add the edges that came since the last analysis to the adjacency."""
        new = list(islice(self.edges, self._indexed, None))
        succ = self.succ
        for source, target in new:
            targets = succ.get(source)
            if targets is None:
                succ[source] = [target]
            else:
                targets.append(target)
        self._indexed = len(self.edges)
        return new

    def find_cycles(self, budget: int = ANALYSIS_BUDGET) -> List[Cycle]:
        """Witness cycles through the edges that changed since the last call.

        Never enumerates all cycles: per changed edge in a strongly connected
        component, the shortest cycle through it is classified and, if that is
        not a potential deadlock, a bounded search looks for a longer cycle
        through the edge that distinct threads can close. ``budget`` bounds the
        work; edges it did not reach stay dirty for the next call.
        """
        if not self.has_work:
            return []
        new_edges = self._index_new_edges()
        dirty = dict.fromkeys(chain(self._left, new_edges, self._more))
        self._more = []
        component, current = self._strong_components(grew=bool(new_edges))
        found: Dict[Tuple[LockId, ...], Cycle] = {}
        covered: Set[Tuple[LockId, LockId]] = set()
        threads: Dict[int, bool] = {}  # component -> whether several threads made its edges
        work = [budget * self._boost]
        left: Dict[Tuple[LockId, LockId], None] = {}
        # the edges the components were not computed with
        waiting = set(islice(self.edges, self._components_edges, None)) if not current else set()
        for edge in dirty:  # arrival order: deterministic for the same input
            if work[0] <= 0:
                left[edge] = None
                continue
            source, target = edge
            group = component.get(source)
            if group is None or component.get(target) != group:
                if not current and edge in waiting:
                    left[edge] = None  # components not computed with this edge yet
                continue
            if edge in covered:
                continue
            cycle = self._witness(source, target, component, group, work, threads)
            if cycle is None:
                if work[0] <= 0:
                    left[edge] = None  # the search was cut short: try again next time
                continue
            ring = cycle.locks
            found.setdefault(ring, cycle)
            covered.update(zip(ring, ring[1:] + ring[:1]))
        # Each analysis starts the searches it did not finish again: if not one
        # finished, the next one gets twice the budget, so analysis always ends.
        stalled = bool(left) and len(left) == len(dirty) and current
        self._boost = min(self._boost * 2, MAX_BUDGET_BOOST) if stalled else 1
        self._left = left
        return [found[ring] for ring in sorted(found)]

    def settled_cycles(self) -> Optional[List[Cycle]]:
        """The cycles that one analysis of the whole graph finds, its edges taken
        in sorted order, or None if MAX_SETTLING_ANALYSES budgets do not do.

        Incremental analyses depend on which edges had arrived when each ran (a
        cycle through an edge whose reverse had not come yet is a longer one), so
        the same program traced twice would get different findings; these
        depend on the edges alone."""
        whole = ProcessGraph(self.key)
        whole.decode = self.decode
        whole.lock_ids = self.lock_ids
        whole.edges = {edge: self.edges[edge] for edge in sorted(self.edges)}
        found: Dict[Tuple[LockId, ...], Cycle] = {}
        for _ in range(MAX_SETTLING_ANALYSES):
            for cycle in whole.find_cycles():
                found.setdefault(cycle.locks, cycle)
            if not whole.has_work:
                self.longest_cut |= whole.longest_cut
                return [found[ring] for ring in sorted(found)]
        return None

    def _strong_components(self, grew: bool) -> Tuple[Dict[LockId, int], bool]:
        """Lock -> component of the locks that can be on a cycle (one linear pass),
        and whether it covers every edge. A big graph gets it again only once it
        grew by SCC_REGROWTH, or stopped growing: the pass costs more than many
        analyses' searches, and edges it does not cover yet wait for it."""
        stale = self._components is None or self._components_edges < len(self.edges)
        if stale and (len(self.edges) <= SCC_EDGE_LIMIT or self._components is None or not grew
                      or len(self.edges) >= self._components_edges * SCC_REGROWTH):
            self._components = strongly_connected(self.succ)
            self._components_edges = len(self.edges)
        assert self._components is not None
        return self._components, self._components_edges == len(self.edges)

    def _witness(self, source: LockId, target: LockId, component: Mapping[LockId, int], group: int,
                 work: List[int], threads: Dict[int, bool]) -> Optional[Cycle]:
        path = self._shortest_path(target, source, component, group, work)
        if path is None:
            return None
        shortest = self.classify(_rotate(tuple([source] + path[:-1])))
        if shortest is not None and shortest.kind == POTENTIAL_DEADLOCK and shortest.suppressed is None:
            return shortest
        if not self._several_threads(group, component, threads):
            return shortest  # one thread made every edge of the component: no distinct threads to find
        longer = self._distinct_thread_cycle(source, target, component, group, work)
        return longer if longer is not None else shortest

    def _several_threads(self, group: int, component: Mapping[LockId, int], known: Dict[int, bool]) -> bool:
        """Whether the edges inside a component come from more than one thread
        (worked out once per analysis and component)."""
        if group not in known:
            tids: Set[int] = set()
            for source, targets in self.succ.items():
                if component.get(source) != group:
                    continue
                for target in targets:
                    if component.get(target) == group:
                        tids.update(ev.tid for ev in self.evidence(source, target))
                        if len(tids) > 1:
                            break
                if len(tids) > 1:
                    break
            known[group] = len(tids) > 1
        return known[group]

    def _shortest_path(self, start: LockId, goal: LockId, component: Mapping[LockId, int], group: int,
                       work: List[int]) -> Optional[List[LockId]]:
        """Breadth-first path start -> ... -> goal inside the component (goal included)."""
        parent: Dict[LockId, Optional[LockId]] = {start: None}
        frontier = [start]
        for _ in range(MAX_CYCLE_LENGTH - 1):
            following = []
            for node in frontier:
                for nxt in self.succ.get(node, ()):
                    work[0] -= 1
                    if nxt in parent or component.get(nxt) != group:
                        continue
                    parent[nxt] = node
                    if nxt == goal:
                        path = [nxt]
                        while parent[path[-1]] is not None:
                            path.append(parent[path[-1]])  # type: ignore[arg-type]
                        return path[::-1]
                    following.append(nxt)
            if not following or work[0] <= 0:
                return None
            frontier = following
        self.longest_cut = True  # the goal may be further than MAX_CYCLE_LENGTH
        return None

    def _distinct_thread_cycle(self, source: LockId, target: LockId, component: Mapping[LockId, int],
                               group: int, work: List[int]) -> Optional[Cycle]:
        """Depth-first search for a cycle through source -> target whose edges distinct
        threads, with no gate lock and blocking modes, can close (bounded by ``work``)."""
        first_options = [e for e in self.evidence(source, target) if e.to_how != TIMED]
        ring: List[LockId] = [source, target]
        chosen: List[Evidence] = []

        def compatible(ev: Evidence) -> bool:
            if not _conflicts(chosen[-1].to_mode, ev.from_mode):
                return False
            return all(ev.tid != c.tid and _no_common_lock(ev, c) for c in chosen)

        def extend(node: LockId) -> bool:
            for nxt in self.succ.get(node, ()):
                if component.get(nxt) != group:
                    continue
                closing = nxt == source
                if not closing and nxt in ring:
                    continue
                if not closing and len(ring) >= MAX_CYCLE_LENGTH:
                    self.longest_cut = True
                    continue
                for ev in self.evidence(node, nxt):
                    work[0] -= 1
                    if work[0] <= 0:
                        return False
                    if ev.to_how == TIMED or not compatible(ev):
                        continue
                    if closing:
                        if _conflicts(ev.to_mode, chosen[0].from_mode):
                            chosen.append(ev)
                            return True
                        continue
                    chosen.append(ev)
                    ring.append(nxt)
                    if extend(nxt):
                        return True
                    ring.pop()
                    chosen.pop()
            return False

        for first in first_options:
            chosen[:] = [first]
            if extend(target):
                steps = tuple(CycleStep(ring[i], ring[(i + 1) % len(ring)], ev) for i, ev in enumerate(chosen))
                return self._cycle(POTENTIAL_DEADLOCK, None, steps)
            if work[0] <= 0:
                break
        return None

    def _cycle(self, kind: str, suppressed: Optional[str], steps: Tuple[CycleStep, ...],
               gates: Tuple[LockId, ...] = ()) -> Cycle:
        start = min(range(len(steps)), key=lambda i: steps[i].from_lock)
        steps = steps[start:] + steps[:start]
        kinds = tuple(step.evidence.from_kind for step in steps)
        first = steps[0].evidence
        return Cycle(self.key, first.comm, first.mntns_id, kind, suppressed, steps, gates, kinds)

    def classify(self, ring: Sequence[LockId]) -> Optional[Cycle]:
        """What the cycle ``ring[0] -> ring[1] -> ... -> ring[0]`` means, or None."""
        pairs = [(ring[i], ring[(i + 1) % len(ring)]) for i in range(len(ring))]
        options = [self.evidence(a, b) for a, b in pairs]

        def build(kind: str, suppressed: Optional[str], chosen: List[Evidence],
                  gates: Tuple[LockId, ...] = ()) -> Cycle:
            steps = tuple(CycleStep(a, b, ev) for (a, b), ev in zip(pairs, chosen))
            return self._cycle(kind, suppressed, steps, gates)

        chosen = _assign(options, distinct=True, gate_free=True, blocking=True, no_deadline=True)
        if chosen is not None:
            return build(POTENTIAL_DEADLOCK, None, chosen)
        threads = [{ev.tid for ev in option} for option in options]
        # The weakest condition of each family, decided exactly: if it fails, so do
        # all the searches below it (most cycles found in big graphs fail both).
        if _distinct_threads_possible(threads):
            found = _classify_distinct(options, build)
            if found is not None:
                return found
        if threads and set.intersection(*threads):
            return _classify_same_thread(options, build)
        return None


def _classify_distinct(options: List[List[Evidence]], build: Callable[..., Cycle]) -> Optional[Cycle]:
    """Distinct threads can close the cycle: which condition keeps it from deadlocking, if any."""
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
    return None

def _classify_same_thread(options: List[List[Evidence]], build: Callable[..., Cycle]) -> Optional[Cycle]:
    """One thread made every step: an inversion, and whether a mode or deadline makes it harmless."""
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


def _distinct_threads_possible(threads: Sequence[Set[int]]) -> bool:
    """Can each step get a thread of its own (``threads[i]``: the threads that made
    step i)? A bipartite matching, by augmenting paths (Kuhn): exact, and cheap for
    cycles of at most MAX_CYCLE_LENGTH steps."""
    owner: Dict[int, int] = {}  # thread -> the step it is matched to

    def augment(step: int, visited: Set[int]) -> bool:
        for tid in threads[step]:
            if tid in visited:
                continue
            visited.add(tid)
            if tid not in owner or augment(owner[tid], visited):
                owner[tid] = step
                return True
        return False

    return all(augment(step, set()) for step in range(len(threads)))


def _identity(evidence: Evidence) -> tuple:
    """What makes two observations of an edge different."""
    return (evidence.tid, evidence.from_mode, evidence.to_mode, evidence.to_how, evidence.held)


def strongly_connected(succ: Mapping[LockId, Iterable[LockId]]) -> Dict[LockId, int]:
    """Node -> component number, for nodes of components that can hold a cycle.

    Tarjan's algorithm without recursion (graphs can be deep), linear time.
    """
    index: Dict[LockId, int] = {}
    low: Dict[LockId, int] = {}
    on_stack: Set[LockId] = set()
    stack: List[LockId] = []
    component: Dict[LockId, int] = {}
    counter = 0
    groups = 0
    for root in succ:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ.get(child, ()))))
                    advanced = True
                    break
                if child in on_stack and index[child] < low[node]:
                    low[node] = index[child]
            if advanced:
                continue
            work.pop()
            if work and low[node] < low[work[-1][0]]:
                low[work[-1][0]] = low[node]
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    for member in members:
                        component[member] = groups
                    groups += 1
    return component


def _rotate(ring: Tuple[LockId, ...]) -> Tuple[LockId, ...]:
    start = ring.index(min(ring))
    return ring[start:] + ring[:start]


def _gate_locks(chosen: Sequence[Evidence]) -> Tuple[LockId, ...]:
    gates: Set[LockId] = set()
    for i, a in enumerate(chosen):
        modes_a = held_modes(a)
        for b in chosen[i + 1:]:
            for lock, gen, mode in b.held:
                other = modes_a.get((lock, gen))
                if other is not None and _conflicts(other, mode):
                    gates.add((lock, gen))
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
            if gate_free and not _no_common_lock(other, ev):
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
    evidence_dropped_by_exited: int = 0  # see ProcessGraph.evidence_dropped
    longest_cut_by_exited: Set[ProcessKey] = field(default_factory=set)  # see ProcessGraph.longest_cut


class LockGraphStore:
    """Lock-order graphs of every traced process, and the findings made from them.

    Findings outlive their process. A process's graph is kept after its exit
    until EXIT_GRACE_ANALYSES analyses have passed (its last edges come with
    the fetch after the exit event; they join the same graph, never a new one)
    and its analysis is complete; only then is it dropped. Before, and at a
    trace's end, its findings are settled: replaced by those of one analysis of
    its whole graph (ProcessGraph.settled_cycles), so that they do not depend
    on when its edges arrived.
    """

    def __init__(self, keep_session: Optional[Callable[[int], bool]] = None) -> None:
        self.graphs: Dict[ProcessKey, ProcessGraph] = {}
        self.findings: Dict[Tuple[ProcessKey, Tuple[LockId, ...]], Cycle] = {}
        self.stats = StoreStats()
        self._dirty: Set[ProcessKey] = set()
        self._dropped: Set[ProcessKey] = set()  # processes whose graph was dropped (the latest ones)
        self._dropped_order: Deque[ProcessKey] = deque()
        self._keep_session = keep_session  # which sessions' edges to analyse (default: all)
        self._analyses = 0
        self._exited_at: Dict[ProcessKey, int] = {}  # exited process -> analyses done when it exited
        self._rings_of: Dict[ProcessKey, Set[Tuple[LockId, ...]]] = {}  # process -> its findings' locks
        self.unsettled: Set[ProcessKey] = set()  # graphs too big to settle: findings as they came

    def _graph(self, pid: int, start: int) -> ProcessGraph:
        graph = self.graphs.get((pid, start))  # type: ignore[call-overload]  # equal to ProcessKey(pid, start)
        if graph is None:
            key = ProcessKey(pid, start)
            graph = self.graphs[key] = ProcessGraph(key)
            if key in self._dropped:
                # edges after its graph was dropped (a very late fetch): the same
                # process, analysed and dropped again, not a new one
                self._exited_at.setdefault(key, self._analyses)
            else:
                self.stats.processes_seen += 1
        return graph

    def add_edge(self, record: LockEdge) -> None:
        if self._keep_session is not None and not self._keep_session(record.session_id):
            return
        graph = self._graph(record.pid, record.process_start)
        self.stats.edges_seen += 1
        if graph.add(record):
            self._dirty.add(graph.key)

    def add_edge_batch(self, batch: LockEdgeBatch) -> None:
        """Add a fetch's edges; a record is decoded only when its edge is already
        known (to compare the observations) or when analysis needs it.

        The companion's hot loop: for a new edge, three small tuples and one
        dictionary store, the same steps as ProcessGraph.add, inlined."""
        keep = self._keep_session
        decode = batch.decode
        pid = start = -1
        graph: Optional[ProcessGraph] = None
        edges: Dict[Tuple[LockId, LockId], object] = {}
        lock_ids: Dict[LockId, LockId] = {}
        own_decoder = False  # the graph's pending evidence is decoded with this batch's decoder
        in_batch: Dict[Tuple[int, int], ProcessGraph] = {}  # the graphs of this batch's processes
        seen = 0
        for (record_pid, record_start, session, from_lock, from_gen, to_lock, to_gen), raw in zip(batch.keys,
                                                                                                 batch.raws):
            if keep is not None and not keep(session):
                continue
            seen += 1
            if record_pid != pid or record_start != start:  # records of several processes interleave
                pid, start = record_pid, record_start
                graph = in_batch.get((pid, start))
                if graph is None:
                    graph = in_batch[(pid, start)] = self._graph(pid, start)
                    self._dirty.add(graph.key)
                    if graph.decode is None:
                        graph.decode = decode
                edges = graph.edges
                lock_ids = graph.lock_ids
                own_decoder = graph.decode is decode
            source = (from_lock, from_gen)
            target = (to_lock, to_gen)
            if source == target:
                continue
            source = lock_ids.setdefault(source, source)
            target = lock_ids.setdefault(target, target)
            edge = (source, target)
            known = edges.get(edge)
            if known is None:
                # pending: decoded if analysis ever needs it
                edges[edge] = raw if own_decoder else (decode, raw)
            else:
                graph.add_evidence(edge, known, decode(raw))  # type: ignore[union-attr]
        self.stats.edges_seen += seen

    def process_exited(self, record: ProcessExit) -> None:
        key = ProcessKey(record.pid, record.process_start)
        self._exited_at.setdefault(key, self._analyses)

    def graph_of(self, pid: int) -> Optional[ProcessGraph]:
        for key, graph in self.graphs.items():
            if key.pid == pid:
                return graph
        return None

    def analyse(self, budget: int = ANALYSIS_BUDGET) -> List[Cycle]:
        """Look for cycles in graphs that changed; returns findings not seen before.

        Call it after each fetch of the edges. Each graph's analysis is bounded
        by ``budget`` steps; what it did not reach waits for the next call.
        Graphs of processes that exited are dropped once complete (see the class).
        """
        new: List[Cycle] = []
        self._analyses += 1
        for key in sorted(self._dirty):
            graph = self.graphs.get(key)
            if graph is None:
                continue
            new += self._record(graph.find_cycles(budget))
        self._dirty = {key for key in self._dirty if key in self.graphs and self.graphs[key].has_work}
        for key, exited_at in list(self._exited_at.items()):
            graph = self.graphs.get(key)
            if self._analyses - exited_at < EXIT_GRACE_ANALYSES or (graph is not None and graph.has_work):
                continue  # its last edges may still come, or it is not analysed to the end
            del self._exited_at[key]
            if graph is not None:
                new += self._settle(graph)
                del self.graphs[key]
                if key not in self._dropped:
                    self._dropped.add(key)
                    self._dropped_order.append(key)
                    if len(self._dropped_order) > MAX_REMEMBERED_EXITS:
                        self._dropped.discard(self._dropped_order.popleft())
                    self.stats.processes_exited += 1
                self.stats.evidence_dropped_by_exited += graph.evidence_dropped
                if graph.longest_cut:
                    self.stats.longest_cut_by_exited.add(key)
        return new

    def finish(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> List[Cycle]:
        """Analyse until every graph is complete, or ``seconds`` have passed (a
        trace's end); findings not seen before. What is left: :meth:`incomplete`."""
        deadline = clock() + seconds
        new = self.analyse()
        while any(g.has_work for g in self.graphs.values()) and clock() < deadline:
            new += self.analyse()
        for key in sorted(self.graphs):
            graph = self.graphs[key]
            if not graph.has_work:
                new += self._settle(graph)
        return new

    def _record(self, cycles: Iterable[Cycle]) -> List[Cycle]:
        """Keep these findings; those not known before, or whose meaning more
        evidence changed."""
        new = []
        for cycle in cycles:
            known = self.findings.get(cycle.key)
            if known is None or (known.kind, known.suppressed) != (cycle.kind, cycle.suppressed):
                self.findings[cycle.key] = cycle
                self._rings_of.setdefault(cycle.process, set()).add(cycle.locks)
                new.append(cycle)
        return new

    def _settle(self, graph: ProcessGraph) -> List[Cycle]:
        """Replace a complete graph's findings by its settled cycles; the new ones.
        A graph made again after its drop (a very late edge) holds only those
        edges: the findings of the whole one stand."""
        rings = self._rings_of.get(graph.key)
        if not rings or graph.key in self._dropped:
            return []  # no cycle at all: the whole graph has none either
        settled = graph.settled_cycles()
        if settled is None:
            self.unsettled.add(graph.key)
            return []
        keep = {cycle.locks for cycle in settled}
        for ring in rings - keep:
            del self.findings[(graph.key, ring)]
        new = self._record(settled)
        for cycle in settled:  # the settled evidence too, not only the settled rings
            self.findings[cycle.key] = cycle
        self._rings_of[graph.key] = keep
        return new

    def incomplete(self) -> Dict[ProcessKey, int]:
        """Processes whose analysis has not covered every edge yet: the edges left."""
        return {key: len(graph.dirty) for key, graph in self.graphs.items() if graph.has_work}

    def cut_short(self) -> Set[ProcessKey]:
        """Processes where a search stopped at MAX_CYCLE_LENGTH locks: a longer
        cycle, if any, was not looked for."""
        live = {key for key, graph in self.graphs.items() if graph.longest_cut}
        return live | self.stats.longest_cut_by_exited

    def evidence_dropped(self) -> int:
        """Observations of an edge not kept because it had MAX_EVIDENCE_PER_EDGE
        already (each a thread and held set that made the same edge)."""
        return self.stats.evidence_dropped_by_exited + sum(g.evidence_dropped for g in self.graphs.values())

    def all_findings(self) -> List[Cycle]:
        return sorted(self.findings.values(), key=lambda c: (c.process, c.locks))
