"""A target's findings and coverage, from the state its Collector gathered:
stacks symbolized (through the files kept open for it, host/keeper.py) and, on
this host, completed from /proc; findings placed on their node, pod and
container; futex waits outside every traced lock function named as coverage
limits. Used by ``trace`` and ``watch`` at their reports; runs no gadget.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

from igdeadlock.analysis.collector import Collector
from igdeadlock.analysis.coverage import ProcessCoverage
from igdeadlock.analysis.lockorder import Cycle
from igdeadlock.analysis.misuse import LockMisuse
from igdeadlock.analysis.waitfor import Deadlock, Hang
from igdeadlock.host.keeper import kept_for
from igdeadlock.host.lockfunctions import BUILT_IN_FAMILIES, LockFamily, known_waits
from igdeadlock.host.procfs import learn_code_locations as locate_code
from igdeadlock.host.stackscan import scan_stack
from igdeadlock.host.symbolize import Symbolizer
from igdeadlock.records import BlockedThread, Frame, StackTrace
from igdeadlock.report.model import (
    FindingView,
    build_deadlock_findings,
    build_findings,
    build_hang_findings,
    build_misuse_findings,
    link_related,
)

# The C libraries' own waits (condition variables, joins, barriers, semaphores,
# their locks): waits made there are no untraced locks, but for those made
# through syscall(), which other code calls to wait on futexes of its own.
_C_LIBRARY_FILE = re.compile(r"^(libc\.so|libc-[\d.]+\.so|libpthread|ld-musl-|libc\.musl)")
_SYSCALL_FUNCTION = "syscall"
MAX_UNTRACED_SITES_NAMED = 3
UNLOCATED_CODE = "code in no file known at"  # a wait site whose address no mapped file was found for


def untraced_wait_site(collector: Collector, symbolizer: Symbolizer, pid: int, site: int,
                       known: Optional["re.Pattern[str]"] = None) -> Optional[str]:
    """Where a futex wait outside every traced lock function was made, named
    (the code that waited); None for the C library's own waits and those
    ``known`` names (a traced library's condition variables)."""
    stack = collector.stack(site)
    frames = symbolizer.resolve(stack) if stack is not None else None
    if not frames:
        return "code whose stack could not be read"
    first = frames[0]
    in_c_library = bool(first.file) and _C_LIBRARY_FILE.match(os.path.basename(first.file or "")) is not None
    if in_c_library and first.function != _SYSCALL_FUNCTION:
        return None
    caller = collector.untraced_callers.get(site)
    if in_c_library and caller is not None:
        # syscall() is a leaf: its caller's return address is the word at the stack pointer
        frames = (symbolizer.resolve(StackTrace(0, pid, (caller,), (0,))) or []) + frames[1:]
    if known is not None and any(f.function and known.fullmatch(f.function) for f in frames):
        return None
    outside = next((f for f in frames if not (f.file and _C_LIBRARY_FILE.match(os.path.basename(f.file)))), first)
    if not outside.file:
        # the gadget's VMA lookup gave up (mmap lock contended) and the process
        # is gone: whose wait this was is unknown, so it still counts
        return f"{UNLOCATED_CODE} {outside.describe()}"
    return outside.describe()


def python_frames(collector: Collector, stack: StackTrace) -> List[Frame]:
    """A CPython process's Python frames at a site, named from what the gadget
    read of their code objects (those it could not read are left out)."""
    frames = []
    for code, instruction in stack.python:
        named = collector.python_codes.get((stack.pid, code))
        if named is not None and named.filename:
            frames.append(Frame(0, named.filename, named.qualname or None, 0, named.filename,
                                named.line(instruction)))
    return frames


def process_coverage(collector: Collector, families: Sequence[LockFamily] = BUILT_IN_FAMILIES,
                     local: bool = False) -> List[ProcessCoverage]:
    """The processes in scope with their limits (Collector.processes), and for
    each the futex waits it made outside every traced lock function: locks
    igdeadlock cannot see (Rust's and Go's mutexes, InnoDB's latches), named by
    the code that waited, so that no report says "no deadlock" about them."""
    entries = collector.processes()
    by_process = {(e.pid, e.process_start): e for e in entries}
    symbolizer = Symbolizer(collector.files, keeper=kept_for(collector))
    known = known_waits(families)
    for key, sites in sorted(collector.untraced_waits.items()):
        entry = by_process.get(key)
        if entry is None:
            continue
        if local:
            # frames the gadget could not name (its VMA lookup gives up under
            # contention), named from /proc while the process runs
            bare = [a for site in sites if (stack := collector.stacks.get(site)) is not None
                    for (file_id, _), a in zip(stack.frames, stack.addresses) if not file_id]
            if bare:
                learn_code_locations(collector, key[0], bare)
        named: Dict[str, int] = {}
        for site, count in sites.items():
            where = untraced_wait_site(collector, symbolizer, key[0], site, known)
            if where is not None:
                named[where] = named.get(where, 0) + count
        if not named:
            continue
        total = sum(named.values())
        top = sorted(named.items(), key=lambda item: (-item[1], item[0]))[:MAX_UNTRACED_SITES_NAMED]
        entry.limits.append(
            f"{total} futex wait(s) outside every traced lock function, in " +
            "; ".join(f"{where} ({count})" for where, count in top) +
            (f" and {len(named) - len(top)} more place(s)" if len(named) > len(top) else "") +
            ": locks taken there are not seen, so no deadlock among them is ruled out")
    return entries


def collector_findings(collector: Collector, now_boot_ns: Optional[int] = None,
                       only: Optional[Sequence[object]] = None, local: bool = False) -> List[FindingView]:
    """A target's findings, symbolized and placed (all of them, or ``only`` these
    cycles and deadlocks); ``now_boot_ns`` (the traced host's boot clock) gives
    blocked threads their waiting time. ``local``: the target traces this host,
    whose /proc can name what the gadget left as bare addresses."""
    symbolizer = Symbolizer(collector.files, keeper=kept_for(collector))
    cache: Dict[int, Optional[List[Frame]]] = {}

    def stack_of(site: int) -> Optional[List[Frame]]:
        if site not in cache:
            stack = collector.stack(site)
            native = symbolizer.resolve(stack) if stack is not None else None
            # a CPython process's Python frames first, its native frames below them
            python = python_frames(collector, stack) if stack is not None else []
            cache[site] = python + native if python and native is not None else (python or native)
        return cache[site]

    def wait_stack_of(wait: BlockedThread) -> Optional[List[Frame]]:
        if local:
            learn_wait_stack(collector, wait)
        addresses = collector.wait_stacks.get((wait.pid, wait.tid), wait.wait_frames)
        return bottom_trimmed(symbolizer.resolve(collector.raw_stack(wait.pid, addresses))) if addresses else None

    deadlocks = [d for d in (only if only is not None else collector.waits.deadlocks.values())
                 if isinstance(d, Deadlock)]
    hangs = [h for h in (only if only is not None else collector.waits.hangs.values()) if isinstance(h, Hang)]
    cycles = [c for c in (only if only is not None else collector.store.all_findings()) if isinstance(c, Cycle)]
    misuses = [m for m in (only if only is not None else collector.misuses.all_findings())
               if isinstance(m, LockMisuse)]
    views = link_related(build_deadlock_findings(deadlocks, stack_of, now_boot_ns, wait_stack_of=wait_stack_of) +
                         build_hang_findings(hangs, stack_of, wait_stack_of, now_boot_ns) +
                         build_findings(cycles, stack_of) + build_misuse_findings(misuses, stack_of))
    keys = ([d.key for d in deadlocks] + [h.key for h in hangs] + [c.key for c in cycles] +
            [m.key for m in misuses])
    return [_place(collector, view, key) for view, key in zip(views, keys) if view.pid not in collector.own_pids]


# Where every thread's stack begins: a stack read by scanning (host/stackscan.py)
# may go on with stale return addresses below them.
_STACK_BOTTOMS = re.compile(r"(__GI_)?_*clone3?|_start")


def bottom_trimmed(frames: List[Frame]) -> List[Frame]:
    """A scanned stack up to where its thread began (clone, clone3, _start)."""
    for i, frame in enumerate(frames):
        if frame.function and _STACK_BOTTOMS.fullmatch(frame.function):
            return frames[:i + 1]
    return frames


def learn_wait_stack(collector: Collector, wait: BlockedThread) -> None:
    """Where a thread of this host waits, while it does: its stack read from
    /proc where the gadget's walk ended in a C library, its addresses named."""
    key = (wait.pid, wait.tid)
    # a snapshot read only its innermost frames (what it waits in)
    if key not in collector.wait_stacks and (len(wait.wait_frames) < 2 or wait.switches):
        scanned = scan_stack(wait.pid, wait.tid)
        # the same wait still (it waits where the record says), or it is another one's stack
        if scanned and (not wait.wait_frames or scanned[0] == wait.wait_frames[0]):
            collector.wait_stacks[key] = tuple(scanned)
    learn_code_locations(collector, wait.pid, collector.wait_stacks.get(key, wait.wait_frames))


def learn_code_locations(collector: Collector, pid: int, addresses: Sequence[int]) -> None:
    """Name code addresses of a process on this host that no stack of the gadget
    named, from its /proc/PID/maps while it runs: the files under ids of their
    own (below 0), the addresses in ``collector.resolved`` as the gadget's are."""
    locate_code(pid, addresses, collector.files, collector.resolved)


def _place(collector: Collector, view: FindingView, key: tuple) -> FindingView:
    meta = collector.meta.get((view.pid, view.process_start))
    first, last = collector.seen.get(key, (None, None))
    return replace(
        view,
        target=collector.target,
        node=(meta.node if meta else "") or collector.node,
        namespace=meta.namespace if meta else "",
        pod=meta.pod if meta else "",
        container=(meta.container or meta.runtime_container) if meta else "",
        container_id=meta.container_id if meta else "",
        first_seen=first,
        last_seen=last,
    )
