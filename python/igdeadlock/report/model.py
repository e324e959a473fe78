"""The report's model: findings as views (locks, threads, edges with their
symbolized stacks), cluster findings, the report, and where things were seen.
Built from the analysis's cycles and deadlocks; rendered by the modules beside
this one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from igdeadlock.analysis.coverage import ProcessCoverage
from igdeadlock.analysis.lockorder import POTENTIAL_DEADLOCK, SINGLE_THREAD_INVERSION, Cycle, LockId, ProcessKey
from igdeadlock.analysis.misuse import EXIT_HOLDING_LOCK, RELOCK_HELD, UNLOCK_NOT_HELD, UNLOCK_NOT_OWNER, LockMisuse
from igdeadlock.analysis.waitfor import ACTUAL_DEADLOCK, ALL_THREADS_BLOCKED, Deadlock, Hang
from igdeadlock.records import BlockedThread, Frame

StackLookup = Callable[[int], Optional[List[Frame]]]
USER_SUPPRESSED = "user"  # FindingView.suppressed of findings a suppression rule or a baseline hides


@dataclass(frozen=True)
class RenderOptions:
    show_suppressed: bool = False  # also cycles that are not deadlocks, with the reason


def hex_address(value: int) -> str:
    return f"0x{value:x}"


@dataclass(frozen=True)
class EdgeView:
    from_lock: LockId
    to_lock: LockId
    tid: int
    comm: str
    from_mode: int
    to_mode: int
    how: int
    held: Tuple[LockId, ...]  # the other locks the thread held then
    from_stack: Optional[List[Frame]]  # where from_lock was acquired
    to_stack: Optional[List[Frame]]  # where to_lock was requested


@dataclass(frozen=True)
class WaitView:
    """One thread of an actual deadlock: it holds ``holds`` and waits for ``waits_for``."""

    tid: int
    comm: str
    holds: LockId
    waits_for: LockId
    held_by: int  # the next thread of the cycle
    mode: int
    blocked_for: Optional[float]  # seconds, when known
    owner_tid: int
    stack: Optional[List[Frame]]  # where it waits
    kind: int = 0  # LockKind of what it waits for (FUTEX: a futex word, no lock)
    held: Tuple[LockId, ...] = ()  # every lock it holds (all-threads-blocked)


@dataclass(frozen=True)
class FindingView:
    kind: str
    suppressed: Optional[str]
    pid: int
    process_start: int
    comm: str
    mntns_id: int
    locks: Tuple[LockId, ...]
    lock_kinds: Tuple[int, ...]
    threads: Tuple[int, ...]
    edges: Tuple[EdgeView, ...]
    gate_locks: Tuple[LockId, ...] = ()
    waits: Tuple[WaitView, ...] = ()
    id: str = ""
    related: Optional[str] = None  # the matching potential/actual deadlock
    suppressed_by: Optional[str] = None  # for USER_SUPPRESSED: the rule's reason, or the baseline
    # where it was seen
    target: str = ""  # the gadget service that reported it
    node: str = ""
    namespace: str = ""
    pod: str = ""
    container: str = ""
    container_id: str = ""
    first_seen: Optional[float] = None  # Unix time of detection
    last_seen: Optional[float] = None


@dataclass(frozen=True)
class Occurrence:
    """One place a cluster finding was seen."""

    target: str
    node: str
    namespace: str
    pod: str
    container: str
    pid: int
    comm: str
    finding: str  # FindingView.id
    first_seen: Optional[float]
    last_seen: Optional[float]


@dataclass(frozen=True)
class ClusterFinding:
    """The same cycle (same code: same acquisition sites) seen in several places."""

    signature: str
    representative: FindingView
    occurrences: Tuple[Occurrence, ...]


@dataclass
class Report:
    findings: List[FindingView]
    stats: Dict[str, object]
    targets: List[Dict[str, object]] = field(default_factory=list)
    processes: List[ProcessCoverage] = field(default_factory=list)  # every process in scope that was seen
    notes: List[str] = field(default_factory=list)  # what limits the report as a whole

    @property
    def clusters(self) -> List[ClusterFinding]:
        return cluster_findings(self.findings)


# C libraries: where a thread waits is named by the program's code that called them
LIBRARY_PREFIXES = ("libc.", "libc-", "libpthread", "ld-musl", "ld-linux", "libstdc++")


def own_code(frames: List[Frame]) -> List[Frame]:
    """The frames from the first one outside the C libraries (all, if none is)."""
    for index, frame in enumerate(frames):
        if frame.function and not os.path.basename(frame.file or "").startswith(LIBRARY_PREFIXES):
            return frames[index:]
    return frames


def _site(frames: Optional[List[Frame]]) -> str:
    """The code location of a stack, the same in every process running that code:
    by function where it is known (a file's path depends on the mount namespace
    that first mapped it), else by file name and offset."""
    if not frames:
        return "?"
    frame = frames[0]
    if frame.function:
        return f"{frame.function}+0x{frame.function_offset:x}"
    return f"{os.path.basename(frame.file or '')}+0x{frame.address:x}" if frame.file else f"0x{frame.address:x}"


def signature(f: FindingView) -> str:
    """Same code, same signature: the acquisition sites of the cycle, whatever the
    addresses, pids and the lock the cycle happens to start at."""
    parts = [f"{_site(e.from_stack)}>{_site(e.to_stack)}:{e.to_mode}" for e in f.edges]
    if not f.edges:  # a hang: where each thread waits, in its own code
        parts = sorted(f"{w.kind}@{_site(own_code(w.stack or []))}" for w in f.waits)
    rotations = [parts[i:] + parts[:i] for i in range(len(parts))] or [[]]
    # the user's own suppression does not change what the finding is
    suppressed = f.suppressed if f.suppressed != USER_SUPPRESSED else ""
    text = f.kind + "|" + (suppressed or "") + "|" + ";".join(min(rotations))
    return "sig-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def cluster_findings(findings: Sequence[FindingView]) -> List[ClusterFinding]:
    groups: Dict[str, List[FindingView]] = {}
    for f in findings:
        groups.setdefault(signature(f), []).append(f)
    clusters = []
    for sig, members in groups.items():
        members = sorted(members, key=lambda f: (f.first_seen or 0, f.target, f.pid))
        occurrences = tuple(
            Occurrence(f.target, f.node, f.namespace, f.pod, f.container, f.pid, f.comm, f.id,
                       f.first_seen, f.last_seen)
            for f in members
        )
        clusters.append(ClusterFinding(sig, members[0], occurrences))
    return sorted(clusters, key=lambda c: (_SEVERITY.get(c.representative.kind, 9),
                                           c.representative.suppressed or "", c.signature))


_SEVERITY = {ACTUAL_DEADLOCK: 0, ALL_THREADS_BLOCKED: 0, RELOCK_HELD: 1, POTENTIAL_DEADLOCK: 1, EXIT_HOLDING_LOCK: 2,
             UNLOCK_NOT_OWNER: 2, UNLOCK_NOT_HELD: 2, SINGLE_THREAD_INVERSION: 3}


def finding_id(kind: str, process: ProcessKey, locks: Iterable[LockId]) -> str:
    """Stable id of a finding: the same cycle in the same process gets the same id."""
    text = f"{kind}:{process.pid}:{process.start}:" + ",".join(f"{a:x}.{g}" for a, g in sorted(locks))
    prefix = {ACTUAL_DEADLOCK: "ad", ALL_THREADS_BLOCKED: "ab", POTENTIAL_DEADLOCK: "pd",
              SINGLE_THREAD_INVERSION: "st", RELOCK_HELD: "rh",
              UNLOCK_NOT_OWNER: "un", UNLOCK_NOT_HELD: "nh", EXIT_HOLDING_LOCK: "eh"}.get(kind, "f")
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def build_deadlock_findings(deadlocks: Iterable[Deadlock], stack_of: StackLookup,
                            now_boot_ns: Optional[int], lock_kinds: Optional[Mapping[LockId, int]] = None,
                            wait_stack_of: Optional[Callable[[BlockedThread], Optional[List[Frame]]]] = None,
                            ) -> List[FindingView]:
    """Each thread of a lock cycle: the lock it waits for, who holds it, and
    where it asked for it (a traced acquisition's site) or where it waits (a
    snapshot's wait: its stack, read while it waited)."""
    findings = []
    for deadlock in deadlocks:
        steps = deadlock.steps
        # blocked until now, or until the process ended
        until = deadlock.ended or now_boot_ns
        waits = tuple(
            WaitView(
                tid=step.tid,
                comm=step.comm,
                holds=step.holds,
                waits_for=step.waits_for,
                held_by=steps[(i + 1) % len(steps)].tid,
                mode=step.mode,
                blocked_for=max(0.0, (until - step.since) / 1e9) if until and step.since else None,
                owner_tid=step.owner_tid,
                stack=stack_of(step.site) if step.site or wait_stack_of is None or step.wait is None
                else wait_stack_of(step.wait),
            )
            for i, step in enumerate(steps)
        )
        edges = tuple(
            EdgeView(from_lock=w.holds, to_lock=w.waits_for, tid=w.tid, comm=w.comm, from_mode=0, to_mode=w.mode,
                     how=0, held=(), from_stack=None, to_stack=w.stack)
            for w in waits
        )
        findings.append(FindingView(
            kind=ACTUAL_DEADLOCK,
            suppressed=None,
            pid=deadlock.process.pid,
            process_start=deadlock.process.start,
            comm=deadlock.comm,
            mntns_id=deadlock.mntns_id,
            locks=deadlock.locks,
            lock_kinds=tuple(step.kind for step in steps),
            threads=deadlock.threads,
            edges=edges,
            waits=waits,
            id=finding_id(ACTUAL_DEADLOCK, deadlock.process, deadlock.locks),
        ))
    return findings


def build_hang_findings(hangs: Iterable[Hang], stack_of: StackLookup,
                        wait_stack_of: Callable[[BlockedThread], Optional[List[Frame]]],
                        now_boot_ns: Optional[int]) -> List[FindingView]:
    """Each thread of a hung process: what it waits for (a lock, or a futex
    word), who holds that lock, the locks it holds, and where it waits."""
    findings = []
    for hang in hangs:
        until = hang.ended or now_boot_ns
        waits = tuple(
            WaitView(
                tid=b.tid,
                comm=b.comm,
                holds=(b.held[0][0], b.held[0][1]) if b.held else (0, 0),
                waits_for=(b.lock, b.gen),
                held_by=b.owner_tid,
                mode=b.mode,
                blocked_for=max(0.0, (until - b.since) / 1e9) if until and b.since else None,
                owner_tid=b.owner_tid,
                stack=stack_of(b.site) if b.site else wait_stack_of(b),
                kind=b.kind,
                held=tuple((lock, gen) for lock, gen, _ in b.held),
            )
            for b in hang.waits
        )
        findings.append(FindingView(
            kind=ALL_THREADS_BLOCKED,
            suppressed=None,
            pid=hang.process.pid,
            process_start=hang.process.start,
            comm=hang.comm,
            mntns_id=hang.mntns_id,
            locks=hang.locks,
            lock_kinds=tuple(b.kind for b in hang.waits),
            threads=hang.threads,
            edges=(),
            waits=waits,
            id=finding_id(ALL_THREADS_BLOCKED, hang.process, hang.locks),
        ))
    return findings


def link_related(findings: Sequence[FindingView]) -> List[FindingView]:
    """Point each actual deadlock and the potential deadlock on the same locks at each other."""
    potential = {(f.pid, f.process_start, frozenset(f.locks)): f for f in findings
                 if f.kind == POTENTIAL_DEADLOCK}
    links: Dict[str, str] = {}
    for f in findings:
        if f.kind == ACTUAL_DEADLOCK:
            match = potential.get((f.pid, f.process_start, frozenset(f.locks)))
            if match is not None:
                links[f.id] = match.id
                links[match.id] = f.id
    return [replace(f, related=links.get(f.id)) for f in findings]


def build_findings(cycles: Iterable[Cycle], stack_of: StackLookup) -> List[FindingView]:
    findings = []
    for cycle in cycles:
        edges = tuple(
            EdgeView(
                from_lock=step.from_lock,
                to_lock=step.to_lock,
                tid=step.evidence.tid,
                comm=step.evidence.comm,
                from_mode=step.evidence.from_mode,
                to_mode=step.evidence.to_mode,
                how=step.evidence.to_how,
                held=tuple(sorted((lock, gen) for lock, gen, _ in step.evidence.held
                                  if (lock, gen) != step.from_lock)),
                from_stack=stack_of(step.evidence.from_site),
                to_stack=stack_of(step.evidence.to_site),
            )
            for step in cycle.steps
        )
        findings.append(FindingView(
            kind=cycle.kind,
            suppressed=cycle.suppressed,
            pid=cycle.process.pid,
            process_start=cycle.process.start,
            comm=cycle.comm,
            mntns_id=cycle.mntns_id,
            locks=cycle.locks,
            lock_kinds=cycle.lock_kinds or tuple(0 for _ in cycle.locks),
            threads=cycle.threads,
            edges=edges,
            gate_locks=cycle.gate_locks,
            id=finding_id(cycle.kind, cycle.process, cycle.locks),
        ))
    return findings


def build_misuse_findings(misuses: Iterable[LockMisuse], stack_of: StackLookup) -> List[FindingView]:
    """A misuse as a finding: its one lock, its thread (and, for unlock-not-owner,
    the holder), one edge from the lock to itself: ``from_stack`` where the thread
    took it, ``to_stack`` where the misuse happened."""
    findings = []
    for m in misuses:
        edge = EdgeView(from_lock=m.lock, to_lock=m.lock, tid=m.tid, comm=m.comm, from_mode=m.held_mode,
                        to_mode=m.mode, how=0, held=(), from_stack=stack_of(m.held_site) if m.held_site else None,
                        to_stack=stack_of(m.site) if m.site else None)
        findings.append(FindingView(
            kind=m.kind,
            suppressed=None,
            pid=m.process.pid,
            process_start=m.process.start,
            comm=m.comm,
            mntns_id=m.mntns_id,
            locks=(m.lock,),
            lock_kinds=(m.lock_kind,),
            threads=(m.tid, m.owner_tid) if m.owner_tid else (m.tid,),
            edges=(edge,),
            id=finding_id(m.kind, m.process, [m.lock]) + f"-{m.tid}",
        ))
    return findings


def _place(node: str, namespace: str, pod: str, container: str) -> str:
    """node / namespace/pod / container, whatever of it is known."""
    parts = [node, f"{namespace}/{pod}" if pod else "", container]
    return " / ".join(p for p in parts if p)


def where(f: FindingView) -> str:
    container = f.container + (f" ({f.container_id[:12]})" if f.container_id else "")
    return _place(f.node or f.target, f.namespace, f.pod, container)


def where_occurrence(o: Occurrence) -> str:
    return _place(o.node or o.target, o.namespace, o.pod, o.container)


def lock_names(f: FindingView) -> Dict[LockId, str]:
    """M0, M1, ... in cycle order, as every format names a finding's locks."""
    return {lock: f"M{i}" for i, lock in enumerate(f.locks)}


def lock_label(f: FindingView, lock: LockId) -> str:
    return f"{lock_names(f)[lock]} {hex_address(lock[0])}"
