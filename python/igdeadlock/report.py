"""Findings -> reports: a TSan-like text explanation and versioned JSON."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from igdeadlock.coverage import ProcessCoverage
from igdeadlock.decode import ACQUIRE_HOW_NAMES, LOCK_KIND_NAMES, LOCK_MODE_NAMES
from igdeadlock.graph import (
    ACTUAL_DEADLOCK,
    POTENTIAL_DEADLOCK,
    SINGLE_THREAD_INVERSION,
    Cycle,
    Deadlock,
    LockId,
    ProcessKey,
)
from igdeadlock.symbolize import Frame

SCHEMA = "igdeadlock/report/v3"

StackLookup = Callable[[int], Optional[List[Frame]]]


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


def _site(frames: Optional[List[Frame]]) -> str:
    """The code location of a stack, the same in every process running that binary."""
    if not frames:
        return "?"
    frame = frames[0]
    return f"{os.path.basename(frame.file or '')}+0x{frame.address:x}" if frame.file else f"0x{frame.address:x}"


def signature(f: FindingView) -> str:
    """Same code, same signature: the acquisition sites of the cycle, whatever the
    addresses, pids and the lock the cycle happens to start at."""
    parts = [f"{_site(e.from_stack)}>{_site(e.to_stack)}:{e.to_mode}" for e in f.edges]
    rotations = [parts[i:] + parts[:i] for i in range(len(parts))] or [[]]
    text = f.kind + "|" + (f.suppressed or "") + "|" + ";".join(min(rotations))
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


_SEVERITY = {ACTUAL_DEADLOCK: 0, POTENTIAL_DEADLOCK: 1, SINGLE_THREAD_INVERSION: 2}


def finding_id(kind: str, process: ProcessKey, locks: Iterable[LockId]) -> str:
    """Stable id of a finding: the same cycle in the same process gets the same id."""
    text = f"{kind}:{process.pid}:{process.start}:" + ",".join(f"{a:x}.{g}" for a, g in sorted(locks))
    prefix = {ACTUAL_DEADLOCK: "ad", POTENTIAL_DEADLOCK: "pd", SINGLE_THREAD_INVERSION: "st"}.get(kind, "f")
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def build_deadlock_findings(deadlocks: Iterable[Deadlock], stack_of: StackLookup,
                            now_boot_ns: Optional[int], lock_kinds: Optional[Mapping[LockId, int]] = None,
                            ) -> List[FindingView]:
    findings = []
    for deadlock in deadlocks:
        steps = deadlock.steps
        waits = tuple(
            WaitView(
                tid=step.tid,
                comm=step.comm,
                holds=step.holds,
                waits_for=step.waits_for,
                held_by=steps[(i + 1) % len(steps)].tid,
                mode=step.mode,
                blocked_for=max(0.0, (now_boot_ns - step.since) / 1e9) if now_boot_ns and step.since else None,
                owner_tid=step.owner_tid,
                stack=stack_of(step.site),
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


def _frames_json(frames: Optional[List[Frame]]) -> Optional[List[Dict[str, object]]]:
    return None if frames is None else [f.to_json() for f in frames]


def finding_to_json(f: FindingView) -> Dict[str, object]:
    out: Dict[str, object] = {
        "id": f.id,
        "signature": signature(f),
        "kind": f.kind,
        "suppressed": f.suppressed,
        "pid": f.pid,
        "comm": f.comm,
        "mntns_id": f.mntns_id,
        "target": f.target,
        "node": f.node,
        "namespace": f.namespace,
        "pod": f.pod,
        "container": f.container,
        "container_id": f.container_id,
        "first_seen": f.first_seen,
        "last_seen": f.last_seen,
        "mutexes": [hex_address(lock) for lock, _ in f.locks],
        "generations": [gen for _, gen in f.locks],
        "lock_kinds": [LOCK_KIND_NAMES.get(k, str(k)) for k in f.lock_kinds],
        "threads": list(f.threads),
        "gate_locks": [hex_address(lock) for lock, _ in f.gate_locks],
        "edges": [
            {
                "from": hex_address(e.from_lock[0]),
                "to": hex_address(e.to_lock[0]),
                "tid": e.tid,
                "comm": e.comm,
                "from_mode": LOCK_MODE_NAMES.get(e.from_mode, str(e.from_mode)),
                "to_mode": LOCK_MODE_NAMES.get(e.to_mode, str(e.to_mode)),
                "acquire": ACQUIRE_HOW_NAMES.get(e.how, str(e.how)),
                "held": [hex_address(lock) for lock, _ in e.held],
                "from_stack": _frames_json(e.from_stack),
                "to_stack": _frames_json(e.to_stack),
            }
            for e in f.edges
        ],
        "related": f.related,
    }
    if f.kind == ACTUAL_DEADLOCK:
        out["blocked"] = [
            {
                "tid": w.tid,
                "comm": w.comm,
                "waits_for": hex_address(w.waits_for[0]),
                "mode": LOCK_MODE_NAMES.get(w.mode, str(w.mode)),
                "holds": hex_address(w.holds[0]),
                "held_by": w.held_by,
                "owner_tid": w.owner_tid or None,
                "blocked_for_seconds": None if w.blocked_for is None else round(w.blocked_for, 3),
                "stack": _frames_json(w.stack),
            }
            for w in f.waits
        ]
    return out


def cluster_to_json(c: ClusterFinding) -> Dict[str, object]:
    first = [o.first_seen for o in c.occurrences if o.first_seen is not None]
    last = [o.last_seen for o in c.occurrences if o.last_seen is not None]
    return {
        "signature": c.signature,
        "kind": c.representative.kind,
        "suppressed": c.representative.suppressed,
        "finding": c.representative.id,
        "nodes": sorted({o.node or o.target for o in c.occurrences}),
        "pods": sorted({f"{o.namespace}/{o.pod}" for o in c.occurrences if o.pod}),
        "first_seen": min(first) if first else None,
        "last_seen": max(last) if last else None,
        "occurrences": [o.__dict__ for o in c.occurrences],
    }


def report_to_json(report: Report) -> Dict[str, object]:
    return {
        "schema": SCHEMA,
        "findings": [finding_to_json(f) for f in report.findings],
        "clusters": [cluster_to_json(c) for c in report.clusters],
        "targets": report.targets,
        "processes": [p.to_json() for p in report.processes],
        "notes": list(report.notes),
        "stats": dict(report.stats),
    }


def render_json(report: Report) -> str:
    return json.dumps(report_to_json(report), indent=2, sort_keys=False) + "\n"


# --- text ------------------------------------------------------------------------

_TITLES = {
    ACTUAL_DEADLOCK: "deadlock: threads are blocked in a lock cycle right now",
    POTENTIAL_DEADLOCK: "lock-order inversion (potential deadlock)",
    SINGLE_THREAD_INVERSION: "lock-order inversion in a single thread (deadlocks once two threads run it)",
}
_SUPPRESSION_REASONS = {
    "gate-lock": "every thread holds a common gate lock, so the critical sections cannot interleave",
    "read-read": "the cycle only closes through read locks, which do not block each other",
    "timed-lock": "a lock in the cycle is requested with a timeout, so the wait ends by itself",
}


def _lock_word(kind: int) -> str:
    return {0: "Mutex", 1: "RWLock", 2: "Spinlock"}.get(kind, "Lock")


def _stack_lines(frames: Optional[List[Frame]], indent: str = "    ") -> List[str]:
    if not frames:
        return [indent + "(stack unknown)"]
    return [f"{indent}#{i} {frame.describe()}" for i, frame in enumerate(frames)]


def render_deadlock(f: FindingView) -> str:
    names: Dict[LockId, str] = {lock: f"M{i}" for i, lock in enumerate(f.locks)}
    kinds = dict(zip(f.locks, f.lock_kinds))
    title = _TITLES[ACTUAL_DEADLOCK]
    lines = ["=" * 18, f"WARNING: igdeadlock: {title} (pid={f.pid}, {f.comm}) [{f.id}]"]
    ring = " -> ".join(f"thread {w.tid}" for w in f.waits) + f" -> thread {f.waits[0].tid}"
    lines.append(f"  Wait-for cycle: {ring}")
    for w in f.waits:
        lock = f"{_lock_word(kinds.get(w.waits_for, 0)).lower()} {names[w.waits_for]} ({hex_address(w.waits_for[0])})"
        mode = f" for {LOCK_MODE_NAMES.get(w.mode)}" if kinds.get(w.waits_for) == 1 else ""
        since = f", blocked for {w.blocked_for:.1f}s" if w.blocked_for is not None else ""
        holder = "itself" if w.held_by == w.tid else f"thread {w.held_by}"
        lines.append("")
        lines.append(f"  Thread {w.tid} ({w.comm}) waits{mode} for {lock}, held by {holder}{since}, at:")
        lines.extend(_stack_lines(w.stack))
    return _finish(lines, f, "deadlock", f"The lock-order cycle behind it is reported as potential deadlock "
                                         f"{f.related}.")


def render_finding(f: FindingView) -> str:
    if f.kind == ACTUAL_DEADLOCK:
        return render_deadlock(f)
    names: Dict[LockId, str] = {lock: f"M{i}" for i, lock in enumerate(f.locks)}
    kinds = dict(zip(f.locks, f.lock_kinds))

    def label(lock: LockId) -> str:
        name = names.get(lock)
        address = hex_address(lock[0]) + (f" gen {lock[1]}" if lock[1] else "")
        return f"{name} ({address})" if name else address

    title = _TITLES.get(f.kind, f.kind)
    lines = ["=" * 18, f"WARNING: igdeadlock: {title} (pid={f.pid}, {f.comm}) [{f.id}]"]
    if f.suppressed:
        reason = _SUPPRESSION_REASONS.get(f.suppressed, f.suppressed)
        lines.append(f"  Suppressed ({f.suppressed}): {reason}")
        if f.gate_locks:
            lines.append("  Gate lock(s): " + ", ".join(label(g) for g in f.gate_locks))
    ring = " => ".join(label(lock) for lock in f.locks) + f" => {names[f.locks[0]]}"
    lines.append(f"  Cycle in lock order graph: {ring}")
    for e in f.edges:
        target = f"{_lock_word(kinds.get(e.to_lock, 0))} {names[e.to_lock]}"
        source = f"{_lock_word(kinds.get(e.from_lock, 0)).lower()} {names[e.from_lock]}"
        mode = f" for {LOCK_MODE_NAMES.get(e.to_mode)}" if kinds.get(e.to_lock) == 1 else ""
        how = {1: " (trylock)", 2: " (with a timeout)"}.get(e.how, "")
        held_mode = f" (held for {LOCK_MODE_NAMES.get(e.from_mode)})" if kinds.get(e.from_lock) == 1 else ""
        lines.append("")
        lines.append(f"  {target} acquired here{mode}{how} while holding {source}{held_mode} "
                     f"in thread {e.tid} ({e.comm}):")
        lines.extend(_stack_lines(e.to_stack))
        lines.append(f"  {_lock_word(kinds.get(e.from_lock, 0))} {names[e.from_lock]} previously acquired "
                     f"by the same thread here:")
        lines.extend(_stack_lines(e.from_stack))
        if e.held:
            lines.append("  Other locks held: " + ", ".join(label(h) for h in e.held))
    return _finish(lines, f, title, f"Threads are deadlocked on this cycle right now: see {f.related}.")


def _finish(lines: List[str], f: FindingView, title: str, related_note: str) -> str:
    """The end of a finding's text: the related finding, the summary line, the rule."""
    if f.related:
        lines += ["", f"  {related_note}"]
    lines += ["", f"  SUMMARY: igdeadlock: {title}{_summary_site(f)}", "=" * 18]
    return "\n".join(lines) + "\n"


def _summary_site(f: FindingView) -> str:
    for e in f.edges:
        for frame in e.to_stack or []:
            if frame.function:
                where = f" {frame.source}" if frame.source else f" {os.path.basename(frame.file or '')}"
                return f"{where} in {frame.function}"
    return ""


def _place(node: str, namespace: str, pod: str, container: str) -> str:
    """node / namespace/pod / container, whatever of it is known."""
    parts = [node, f"{namespace}/{pod}" if pod else "", container]
    return " / ".join(p for p in parts if p)


def where(f: FindingView) -> str:
    container = f.container + (f" ({f.container_id[:12]})" if f.container_id else "")
    return _place(f.node or f.target, f.namespace, f.pod, container)


def render_text(report: Report, show_suppressed: bool = False) -> str:
    findings, stats = report.findings, report.stats
    shown = [f for f in findings if show_suppressed or not f.suppressed]
    parts = []
    group = None
    for f in sorted(shown, key=lambda f: (where(f), f.pid, _SEVERITY.get(f.kind, 9))) \
            if len(report.targets) > 1 else shown:
        if len(report.targets) > 1 and where(f) != group:
            group = where(f)
            parts.append(f"### {group}\n")
        parts.append(render_finding(f))
    clusters = [c for c in report.clusters if len(c.occurrences) > 1 and (show_suppressed or not
                                                                            c.representative.suppressed)]
    for c in clusters:
        places = ", ".join(f"{where_occurrence(o)} pid {o.pid}" for o in c.occurrences)
        parts.append(f"The same {c.representative.kind} ({c.signature}) was seen {len(c.occurrences)} "
                     f"times: {places}\n")
    parts.extend(render_untraced(report.processes))
    parts.extend(f"igdeadlock: NOTE: {note}\n" for note in report.notes)
    if len(report.targets) > 1 or any(t["state"] != "connected" for t in report.targets):
        parts.append("targets: " + "; ".join(f"{t['address']} {t['state']}" + (f" ({t['error']})" if t.get('error')
                                                                               else "")
                                              for t in report.targets) + "\n")
    actual = sum(1 for f in findings if f.kind == ACTUAL_DEADLOCK)
    potential = sum(1 for f in findings if f.kind == POTENTIAL_DEADLOCK and not f.suppressed)
    single = sum(1 for f in findings if f.kind == SINGLE_THREAD_INVERSION and not f.suppressed)
    suppressed = sum(1 for f in findings if f.suppressed)
    summary = (f"igdeadlock: {actual} actual deadlock(s), {potential} potential deadlock(s), "
               f"{single} single-thread inversion(s), "
               f"{suppressed} suppressed")
    if suppressed and not show_suppressed:
        summary += " (--show-suppressed to see them)"
    parts.append(summary + "\n" + render_stats(stats))
    return "\n".join(parts)


def render_untraced(processes: Sequence[ProcessCoverage]) -> List[str]:
    """One line per process that could not be traced: no finding about it
    means nothing there."""
    lines = []
    for p in processes:
        if not p.traced:
            exe = f", {p.exe}" if p.exe else ""
            place = f" on {p.target}" if p.target else ""
            lines.append(f"igdeadlock: NOT TRACED: pid {p.pid} ({p.comm}{exe}){place}: {p.reason}\n")
    return lines


def where_occurrence(o: Occurrence) -> str:
    return _place(o.node or o.target, o.namespace, o.pod, o.container)


def render_stats(stats: Mapping[str, object]) -> str:
    pieces = []
    for key, value in stats.items():
        if isinstance(value, Mapping):
            inner = ", ".join(f"{k}={v}" for k, v in value.items())
            pieces.append(f"{key}: {inner or 'none'}")
        else:
            pieces.append(f"{key}={value}")
    return "stats: " + "; ".join(pieces) + "\n"
