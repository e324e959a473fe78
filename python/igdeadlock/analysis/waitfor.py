"""Actual deadlocks and hangs: who waits for whom, right now.

Threads the gadget saw blocked in a futex wait inside a lock they acquire, with
the locks they hold: per process, a wait-for graph (thread -> thread holding
the lock it waits for). A cycle still there at the next fetch is a deadlock.
Threads in endless futex waits outside the lock functions (condition
variables, joins, barriers) count too for the other hang: every thread of a
process waiting, for long, with no lock cycle among them.
Blocked threads come from two places: the trace (a thread seen starting to
wait inside a lock it acquires, until it resumes) and snapshots (every thread
waiting at one moment, read from the kernel and the process's memory, with
nothing traced before). A snapshot's cycle is confirmed by the next snapshot
when each of its threads has not run in between (the same ``switches``): a
thread that waits all along cannot have released what it holds.
Pure: no I/O, no gRPC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

from igdeadlock.analysis.lockorder import MAX_CYCLE_LENGTH, TIMED, LockId, ProcessKey, _conflicts
from igdeadlock.gadget import OWNERLESS_KINDS, LockKind
from igdeadlock.records import BlockedThread

MAX_WAIT_CYCLES = 2000  # wait-for cycles examined per process
DEFAULT_HANG_SECONDS = 10.0  # every thread waiting this long: all-threads-blocked

ACTUAL_DEADLOCK = "actual-deadlock"
ALL_THREADS_BLOCKED = "all-threads-blocked"


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
    site: int  # where the thread requested the lock it waits for (0: a snapshot's wait)
    owner_tid: int  # glibc's owner of waits_for, 0 if unknown
    wait: Optional[BlockedThread] = field(default=None, compare=False)  # the record (its stack at the wait)


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


@dataclass(frozen=True)
class Hang:
    """Every thread of a process waits, each for at least ``hang_seconds``: on
    locks (no cycle among them), condition variables, joins, barriers."""

    process: ProcessKey
    comm: str
    mntns_id: int
    waits: Tuple[BlockedThread, ...]  # one per thread, by thread id
    waited: float  # seconds the most recent of the waits had lasted when it was found
    ended: int = 0  # boot time (ns) its process exited, 0 while it runs

    @property
    def threads(self) -> Tuple[int, ...]:
        return tuple(b.tid for b in self.waits)

    @property
    def locks(self) -> Tuple[LockId, ...]:
        return tuple((b.lock, b.gen) for b in self.waits)

    @property
    def key(self) -> Tuple[str, ProcessKey, FrozenSet[Tuple[int, int]]]:
        return (ALL_THREADS_BLOCKED, self.process, frozenset((b.tid, b.lock) for b in self.waits))


class WaitForTracker:
    """Blocked threads and their wait-for graph; reports cycles that persist,
    and processes whose every thread has waited ``hang_seconds`` or more.

    A thread is blocked from the fetch that reports it until a ``resumed``
    event (or its process's exit). A cycle must be seen at two consecutive
    fetches before it is reported: contention that resolves never is.
    ``clock`` (seconds, monotonic) times the waits after their records came.
    """

    def __init__(self, keep_session: Optional[Callable[[int], bool]] = None,
                 hang_seconds: float = DEFAULT_HANG_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.blocked: Dict[int, BlockedThread] = {}
        self.deadlocks: Dict[Tuple, Deadlock] = {}
        self.hangs: Dict[Tuple, Hang] = {}
        # cycles of the last tick -> how each of their threads waited then
        self._candidates: Dict[Tuple, FrozenSet[Tuple[int, int]]] = {}
        self._from_snapshot: Set[int] = set()  # threads blocked as the last snapshot saw them
        self.snapshots = 0
        self._arrived: Dict[int, float] = {}  # tid -> clock() when its record came
        self.keep_session = keep_session
        self.hang_seconds = hang_seconds
        self.clock = clock

    def thread_blocked(self, record: BlockedThread) -> None:
        if self.keep_session is None or self.keep_session(record.session_id):
            self.blocked[record.tid] = record
            self._arrived[record.tid] = self.clock()
            self._from_snapshot.discard(record.tid)  # the trace knows more (the locks it holds)

    def thread_resumed(self, tid: int) -> None:
        self.blocked.pop(tid, None)
        self._arrived.pop(tid, None)
        self._from_snapshot.discard(tid)

    def snapshot_taken(self, threads: Iterable[BlockedThread]) -> None:
        """A snapshot listed every thread waiting now: a thread of the previous
        one it does not list waits no more; one the trace saw blocked keeps
        the trace's record. Call tick() after it."""
        now = self.clock()
        listed: Set[int] = set()
        stored: Set[int] = set()
        for record in threads:
            if self.keep_session is not None and not self.keep_session(record.session_id):
                continue
            listed.add(record.tid)
            if record.tid in self.blocked and record.tid not in self._from_snapshot:
                continue  # blocked as the trace saw it
            self.blocked[record.tid] = record
            self._arrived[record.tid] = now
            stored.add(record.tid)
        for tid in self._from_snapshot - listed:
            self.blocked.pop(tid, None)
            self._arrived.pop(tid, None)
        self._from_snapshot = stored
        self.snapshots += 1

    def process_exited(self, pid: int, start: int = 0, exited: int = 0) -> None:
        """The process is gone: its threads wait no more, and its deadlocks
        lasted until ``exited`` (boot-clock ns, 0 if unknown)."""
        for tid in [t for t, b in self.blocked.items() if b.pid == pid]:
            del self.blocked[tid]
            self._arrived.pop(tid, None)
        if exited:
            for key, deadlock in self.deadlocks.items():
                if deadlock.process == (pid, start) and not deadlock.ended:
                    self.deadlocks[key] = replace(deadlock, ended=exited)
            for key, hang in self.hangs.items():
                if hang.process == (pid, start) and not hang.ended:
                    self.hangs[key] = replace(hang, ended=exited)

    def tick(self, snapshot: bool = False) -> List[object]:
        """After each fetch of blocked threads (``snapshot``: after a snapshot):
        newly confirmed deadlocks, then new hangs of processes without one. A
        cycle with a thread a snapshot found is observed again at the next
        snapshot only: a fetch in between has not looked at that thread."""
        current = {d.key: d for d in find_wait_cycles(self.blocked.values())}
        new: List[object] = []
        seen: Dict[Tuple, FrozenSet[Tuple[int, int]]] = {}
        for key, deadlock in sorted(current.items(), key=lambda kv: repr(kv[0])):
            if any(tid in self._from_snapshot for tid in deadlock.threads) != snapshot:
                if key in self._candidates:
                    seen[key] = self._candidates[key]  # not looked at again by this tick
                continue
            seen[key] = self._waits_of(deadlock)
            # the same threads, each still in the same wait (not run in between)
            if self._candidates.get(key) == seen[key] and key not in self.deadlocks:
                self.deadlocks[key] = deadlock
                new.append(deadlock)
        self._candidates = seen
        in_cycles = {d.process for d in current.values()}
        for hang in find_hangs(self.blocked.values(), self._waited, self.hang_seconds):
            # a lock cycle explains its hang: the deadlock is the finding
            if hang.process not in in_cycles and hang.key not in self.hangs:
                self.hangs[hang.key] = hang
                new.append(hang)
        return new

    def _waits_of(self, deadlock: Deadlock) -> FrozenSet[Tuple[int, int]]:
        """How each thread of a cycle waits: a snapshot's thread by when it last
        ran, a traced one by when its wait began."""
        waits = (self.blocked[tid] for tid in deadlock.threads)
        return frozenset((b.tid, b.switches or b.since) for b in waits)

    def _waited(self, b: BlockedThread) -> float:
        """Seconds thread ``b`` has waited: before its record came, and since."""
        before = max(0, b.observed - b.since) / 1e9
        return before + self.clock() - self._arrived.get(b.tid, self.clock())


def find_wait_cycles(blocked: Iterable[BlockedThread]) -> List[Deadlock]:
    """Cycles of the wait-for graph: thread -> the threads holding what it waits for."""
    import networkx as nx  # (a third of a second to import: only once threads wait)

    by_process: Dict[ProcessKey, List[BlockedThread]] = {}
    for b in blocked:
        by_process.setdefault(ProcessKey(b.pid, b.process_start), []).append(b)
    found: List[Deadlock] = []
    for process, threads in sorted(by_process.items()):
        graph = nx.DiGraph()
        waiting = {b.tid: b for b in threads}
        for b in threads:
            if b.how == TIMED or b.kind == LockKind.FUTEX or b.kind in OWNERLESS_KINDS:
                # a wait with a deadline ends by itself; a futex wait waits for no lock; a lock
                # with no owner (a semaphore) may be released by any thread: no owner is guessed
                continue
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
                                      b.since, b.site, b.owner_tid, b))
            first = waiting[ring[0]]
            found.append(Deadlock(process, first.comm, first.mntns_id, tuple(steps)))
    return found


def find_hangs(blocked: Iterable[BlockedThread], waited: Callable[[BlockedThread], float],
               hang_seconds: float) -> List[Hang]:
    """Processes whose every thread is in an endless wait, each for
    ``hang_seconds`` or more. How many threads a process has comes from its
    most recent wait record: a thread created after it would have to be
    running, and then its creator's record, made after, would count it."""
    by_process: Dict[ProcessKey, List[BlockedThread]] = {}
    for b in blocked:
        by_process.setdefault(ProcessKey(b.pid, b.process_start), []).append(b)
    hangs = []
    for process, threads in sorted(by_process.items()):
        if any(b.how == TIMED for b in threads):
            continue  # one wait has a deadline: the process goes on by itself
        latest = max(threads, key=lambda b: b.observed)
        if not latest.process_threads or len(threads) < latest.process_threads:
            continue
        shortest = min(waited(b) for b in threads)
        if shortest < hang_seconds:
            continue
        waits = tuple(sorted(threads, key=lambda b: b.tid))
        hangs.append(Hang(process, waits[0].comm, waits[0].mntns_id, waits, shortest))
    return hangs
