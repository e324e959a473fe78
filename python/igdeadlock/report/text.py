"""The text report: a ThreadSanitizer-like explanation of every finding, the
processes that could not be traced, the summary and the statistics."""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence

from igdeadlock.analysis.coverage import ProcessCoverage
from igdeadlock.analysis.lockorder import POTENTIAL_DEADLOCK, SINGLE_THREAD_INVERSION, LockId
from igdeadlock.analysis.misuse import EXIT_HOLDING_LOCK, MISUSES, RELOCK_HELD, UNLOCK_NOT_HELD, UNLOCK_NOT_OWNER
from igdeadlock.analysis.waitfor import ACTUAL_DEADLOCK, ALL_THREADS_BLOCKED
from igdeadlock.gadget import LOCK_MODE_NAMES, OWNERLESS_KINDS, LockKind, LockMode
from igdeadlock.records import Frame
from igdeadlock.report.model import (
    _SEVERITY,
    FindingView,
    RenderOptions,
    Report,
    hex_address,
    own_code,
    where,
    where_occurrence,
)

_TITLES = {
    ACTUAL_DEADLOCK: "deadlock: threads are blocked in a lock cycle right now",
    POTENTIAL_DEADLOCK: "lock-order inversion (potential deadlock)",
    SINGLE_THREAD_INVERSION: "lock-order inversion in a single thread (it deadlocks once several threads run it)",
    RELOCK_HELD: "a thread requests a lock it already holds (it hangs, or fails with EDEADLK)",
    UNLOCK_NOT_OWNER: "a thread unlocks a lock that another thread holds",
    UNLOCK_NOT_HELD: "a thread unlocks a lock that nobody holds (unlocked once more than it was locked)",
    EXIT_HOLDING_LOCK: "a thread exited holding a lock (the next thread to wait for it waits forever)",
    ALL_THREADS_BLOCKED: "deadlock: every thread of the process waits, and nothing will wake it",
}
_SUPPRESSION_REASONS = {
    "gate-lock": "every thread holds a common gate lock, so the critical sections cannot interleave",
    "read-read": "the cycle only closes through read locks, which do not block each other",
    "timed-lock": "a lock in the cycle is requested with a timeout, so the wait ends by itself",
    "user": "by the user",
}


def _lock_word(kind: int) -> str:
    words: Dict[int, str] = {LockKind.MUTEX: "Mutex", LockKind.RWLOCK: "RWLock", LockKind.SPINLOCK: "Spinlock",
                             LockKind.SEMAPHORE: "Semaphore-lock", LockKind.GMUTEX: "GMutex",
                             LockKind.PYMUTEX: "PyMutex", LockKind.ABSL_MUTEX: "absl::Mutex"}
    return words.get(kind, "Lock")


def _ownerless_note(names: Mapping[LockId, str], kinds: Mapping[LockId, int]) -> List[str]:
    """What is said of locks with no owner: the thread named took it, nothing more."""
    ownerless = [names[lock] for lock, kind in kinds.items() if kind in OWNERLESS_KINDS and lock in names]
    if not ownerless:
        return []
    what = "is a semaphore" if len(ownerless) == 1 else "are semaphores"
    return ["", f"  Note: {', '.join(sorted(ownerless))} {what} used as a lock: a semaphore has no owner (any "
                "thread may release it); the thread named is the one that took it."]


class _Stacks:
    """Prints each distinct stack of a finding once, named S1, S2, ...; a stack
    seen again is referred to by name (a cycle's edges often share call paths)."""

    def __init__(self) -> None:
        self.names: Dict[tuple, str] = {}

    def lines(self, frames: Optional[List[Frame]], indent: str = "    ") -> List[str]:
        if not frames:
            return [indent + "(stack unknown)"]
        key = tuple(frames)
        name = self.names.get(key)
        if name is not None:
            return [f"{indent}(the same stack as {name}: {frames[0].describe()})"]
        if len(frames) == 1:  # naming a one-frame stack saves nothing
            return [f"{indent}#0 {frames[0].describe()}"]
        name = self.names[key] = f"S{len(self.names) + 1}"
        first = f"{indent}#0 {frames[0].describe()}"
        return [f"{first}   [{name}]"] + [f"{indent}#{i} {frame.describe()}" for i, frame in enumerate(frames)
                                            if i]


def _suppressed_line(f: FindingView) -> List[str]:
    if not f.suppressed:
        return []
    reason = _SUPPRESSION_REASONS.get(f.suppressed, f.suppressed)
    if f.suppressed_by:
        reason += f": {f.suppressed_by}"
    return [f"  Suppressed ({f.suppressed}): {reason}"]


def render_deadlock(f: FindingView) -> str:
    names: Dict[LockId, str] = {lock: f"M{i}" for i, lock in enumerate(f.locks)}
    kinds = dict(zip(f.locks, f.lock_kinds))
    title = _TITLES[ACTUAL_DEADLOCK]
    lines = ["=" * 18, f"WARNING: igdeadlock: {title} (pid={f.pid}, {f.comm}) [{f.id}]", *_suppressed_line(f)]
    stacks = _Stacks()
    ring = " -> ".join(f"thread {w.tid}" for w in f.waits) + f" -> thread {f.waits[0].tid}"
    lines.append(f"  Wait-for cycle: {ring}")
    for w in f.waits:
        lock = f"{_lock_word(kinds.get(w.waits_for, 0)).lower()} {names[w.waits_for]} ({hex_address(w.waits_for[0])})"
        mode = f" for {LOCK_MODE_NAMES.get(w.mode)}" if kinds.get(w.waits_for) == 1 else ""
        since = f", blocked for {w.blocked_for:.1f}s" if w.blocked_for is not None else ""
        holder = "itself" if w.held_by == w.tid else f"thread {w.held_by}"
        held = "taken by" if kinds.get(w.waits_for) in OWNERLESS_KINDS else "held by"
        lines.append("")
        lines.append(f"  Thread {w.tid} ({w.comm}) waits{mode} for {lock}, {held} {holder}{since}, at:")
        lines.extend(stacks.lines(w.stack))
    lines.extend(_ownerless_note(names, kinds))
    return _finish(lines, f, "deadlock", f"The lock-order cycle behind it is reported as potential deadlock "
                                         f"{f.related}.")


def render_hang(f: FindingView) -> str:
    """all-threads-blocked: what each thread waits for, what it holds, where."""
    names: Dict[LockId, str] = {}
    for w in f.waits:
        locks = w.held if w.kind == LockKind.FUTEX else (*w.held, w.waits_for)  # a futex word is no lock
        for lock in locks:
            if lock[0] and lock not in names:
                names[lock] = f"M{len(names)}"
    title = _TITLES[ALL_THREADS_BLOCKED]
    lines = ["=" * 18, f"WARNING: igdeadlock: {title} (pid={f.pid}, {f.comm}) [{f.id}]", *_suppressed_line(f)]
    longest = max((w.blocked_for for w in f.waits if w.blocked_for is not None), default=None)
    waited = f", the longest for {longest:.1f}s" if longest is not None else ""
    lines.append(f"  All {len(f.waits)} thread(s) are in futex waits that no timeout ends{waited}.")
    stacks = _Stacks()
    for w in f.waits:
        if w.kind == LockKind.FUTEX:
            what = f"a futex at {hex_address(w.waits_for[0])} (a condition variable, a join, a barrier...)"
        else:
            holder = f", held by thread {w.held_by}" if w.held_by else ""
            what = f"{_lock_word(w.kind).lower()} {names[w.waits_for]} ({hex_address(w.waits_for[0])}){holder}"
        since = f" for {w.blocked_for:.1f}s" if w.blocked_for is not None else ""
        lines.append("")
        lines.append(f"  Thread {w.tid} ({w.comm}) waits{since} on {what}, at:")
        lines.extend(stacks.lines(w.stack))
        if w.held:
            lines.append("  It holds: " + ", ".join(f"{names[h]} ({hex_address(h[0])})" for h in w.held))
    return _finish(lines, f, ALL_THREADS_BLOCKED, "")


def render_misuse(f: FindingView) -> str:
    """relock-held, unlock-not-owner, unlock-not-held, exit-holding-lock: one lock, one thread."""
    (e,) = f.edges
    lock = f"{_lock_word(f.lock_kinds[0]).lower()} M0 ({hex_address(f.locks[0][0])})"
    thread = f"Thread {e.tid} ({e.comm})"
    title = _TITLES[f.kind]
    lines = ["=" * 18, f"WARNING: igdeadlock: {title} (pid={f.pid}, {f.comm}) [{f.id}]", *_suppressed_line(f), ""]
    stacks = _Stacks()
    if f.kind == RELOCK_HELD:
        mode = f" for {LOCK_MODE_NAMES.get(e.to_mode)}" if f.lock_kinds[0] == 1 else ""
        lines.append(f"  {thread} requests {lock}{mode} here:")
        lines.extend(stacks.lines(e.to_stack))
        held = f" (for {LOCK_MODE_NAMES.get(e.from_mode)})" if f.lock_kinds[0] == 1 else ""
        lines.append(f"  It holds it{held} since here:")
        lines.extend(stacks.lines(e.from_stack))
    elif f.kind == UNLOCK_NOT_OWNER:
        holder = f"thread {f.threads[1]}" if len(f.threads) > 1 else "another thread"
        lines.append(f"  {thread} unlocks {lock}, held by {holder}, here:")
        lines.extend(stacks.lines(e.to_stack))
    elif f.kind == UNLOCK_NOT_HELD:
        lines.append(f"  {thread} unlocks {lock}, which nobody holds, here:")
        lines.extend(stacks.lines(e.to_stack))
    else:
        lines.append(f"  {thread} exited holding {lock}, which it took here:")
        lines.extend(stacks.lines(e.from_stack))
    lines += ["", f"  SUMMARY: igdeadlock: {f.kind}{_summary_site(f)}", "=" * 18]
    return "\n".join(lines) + "\n"


def render_finding(f: FindingView) -> str:
    if f.kind == ACTUAL_DEADLOCK:
        return render_deadlock(f)
    if f.kind == ALL_THREADS_BLOCKED:
        return render_hang(f)
    if f.kind in MISUSES:
        return render_misuse(f)
    names: Dict[LockId, str] = {lock: f"M{i}" for i, lock in enumerate(f.locks)}
    kinds = dict(zip(f.locks, f.lock_kinds))

    def label(lock: LockId) -> str:
        name = names.get(lock)
        address = hex_address(lock[0]) + (f" gen {lock[1]}" if lock[1] else "")
        return f"{name} ({address})" if name else address

    title = _TITLES.get(f.kind, f.kind)
    if f.kind == SINGLE_THREAD_INVERSION:
        title = f"lock-order inversion in a single thread (it deadlocks once {len(f.locks)} threads run these paths)"
    lines = ["=" * 18, f"WARNING: igdeadlock: {title} (pid={f.pid}, {f.comm}) [{f.id}]", *_suppressed_line(f)]
    if f.gate_locks:
        lines.append("  Gate lock(s): " + ", ".join(label(g) for g in f.gate_locks))
    stacks = _Stacks()
    ring = " => ".join(label(lock) for lock in f.locks) + f" => {names[f.locks[0]]}"
    lines.append(f"  Cycle in lock order graph: {ring}")
    for e in f.edges:
        target = f"{_lock_word(kinds.get(e.to_lock, 0))} {names[e.to_lock]}"
        source = f"{_lock_word(kinds.get(e.from_lock, 0)).lower()} {names[e.from_lock]}"
        # the mode of rwlocks, and of other locks when taken for reading (absl::Mutex::ReaderLock)
        shared = LockMode.SHARED
        mode = f" for {LOCK_MODE_NAMES.get(e.to_mode)}" if kinds.get(e.to_lock) == LockKind.RWLOCK or \
            e.to_mode == shared else ""
        how = {1: " (trylock)", 2: " (with a timeout)"}.get(e.how, "")
        held_mode = f" (held for {LOCK_MODE_NAMES.get(e.from_mode)})" if kinds.get(e.from_lock) == LockKind.RWLOCK \
            or e.from_mode == shared else ""
        lines.append("")
        lines.append(f"  {target} acquired here{mode}{how} while holding {source}{held_mode} "
                     f"in thread {e.tid} ({e.comm}):")
        lines.extend(stacks.lines(e.to_stack))
        lines.append(f"  {_lock_word(kinds.get(e.from_lock, 0))} {names[e.from_lock]} previously acquired "
                     f"by the same thread here:")
        lines.extend(stacks.lines(e.from_stack))
        if e.held:
            lines.append("  Other locks held: " + ", ".join(label(h) for h in e.held))
    lines.extend(_ownerless_note(names, kinds))
    return _finish(lines, f, title, f"Threads are deadlocked on this cycle right now: see {f.related}.")


def _finish(lines: List[str], f: FindingView, title: str, related_note: str) -> str:
    """The end of a finding's text: the related finding, the summary line, the rule."""
    if f.related:
        lines += ["", f"  {related_note}"]
    lines += ["", f"  SUMMARY: igdeadlock: {title}{_summary_site(f)}", "=" * 18]
    return "\n".join(lines) + "\n"


def _summary_site(f: FindingView) -> str:
    stacks = [e.to_stack or e.from_stack or [] for e in f.edges] + [w.stack or [] for w in f.waits]
    for frames in stacks:
        for frame in own_code(frames):
            if frame.function:
                where = f" {frame.source}" if frame.source else f" {os.path.basename(frame.file or '')}"
                return f"{where} in {frame.function}"
    return ""


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
    actual = sum(1 for f in findings if f.kind in (ACTUAL_DEADLOCK, ALL_THREADS_BLOCKED))
    potential = sum(1 for f in findings if f.kind == POTENTIAL_DEADLOCK and not f.suppressed)
    single = sum(1 for f in findings if f.kind == SINGLE_THREAD_INVERSION and not f.suppressed)
    suppressed = sum(1 for f in findings if f.suppressed)
    misuses = sum(1 for f in findings if f.kind in MISUSES)
    summary = (f"igdeadlock: {actual} actual deadlock(s), {potential} potential deadlock(s), "
               f"{single} single-thread inversion(s), {misuses} lock misuse(s), "
               f"{suppressed} suppressed")
    if suppressed and not show_suppressed:
        summary += " (--show-suppressed to see them)"
    limited = sum(1 for p in report.processes if p.limits or not p.traced)
    if limited:
        # no finding in those is no clean bill: the LIMIT and NOT TRACED lines say why
        summary += f"; {limited} process(es) with limits or not traced (see above)"
    parts.append(summary + "\n" + render_stats(stats))
    return "\n".join(parts)


def render_untraced(processes: Sequence[ProcessCoverage]) -> List[str]:
    """One line per process that could not be traced, or where a limit was
    reached: no finding about it does not mean nothing is there."""
    lines = []
    for p in processes:
        exe = f", {p.exe}" if p.exe else ""
        place = f" on {p.target}" if p.target else ""
        if not p.traced:
            lines.append(f"igdeadlock: NOT TRACED: pid {p.pid} ({p.comm}{exe}){place}: {p.reason}\n")
        if p.limits:
            lines.append(f"igdeadlock: LIMIT: pid {p.pid} ({p.comm}{exe}){place}: {'; '.join(p.limits)}\n")
    return lines


def render_stats(stats: Mapping[str, object]) -> str:
    pieces = []
    for key, value in stats.items():
        if isinstance(value, Mapping):
            inner = ", ".join(f"{k}={v}" for k, v in value.items())
            pieces.append(f"{key}: {inner or 'none'}")
        else:
            pieces.append(f"{key}={value}")
    return "stats: " + "; ".join(pieces) + "\n"


def render(report: Report, options: RenderOptions) -> str:
    return render_text(report, show_suppressed=options.show_suppressed)
