"""One target's collected view: everything the gadget there reported (lock-order
graphs, blocked threads, stacks, files, where processes run, which were traced,
loss counters), fed record by record. No I/O: whether a process still runs is
asked through ``alive``.
"""

from __future__ import annotations

import re
import time
from operator import itemgetter
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from igdeadlock.analysis.coverage import CoverageTable, ProcessCoverage
from igdeadlock.analysis.lockorder import MAX_CYCLE_LENGTH, LockGraphStore
from igdeadlock.analysis.misuse import MisuseTracker
from igdeadlock.analysis.waitfor import DEFAULT_HANG_SECONDS, Deadlock, WaitForTracker
from igdeadlock.gadget import BLOCKED, COUNTER_MEANINGS, COUNTER_NAMES, EDGES, LockKind
from igdeadlock.records import (
    BlockedSnapshot,
    BlockedThread,
    Counter,
    FetchTick,
    LockEdge,
    LockEdgeBatch,
    LogMessage,
    MappedFile,
    MisuseEvent,
    ProcessEvent,
    ProcessExit,
    ProcessMeta,
    PythonCode,
    StackTrace,
    ThreadResumed,
    UntracedWait,
)

_PROCESS_OF_KEY = itemgetter(0, 1)  # an edge batch's key -> (pid, process_start)
REAP_EVERY_FETCHES = 20  # how often graphs of vanished processes are looked for
_LOST_SAMPLES = re.compile(r"lost (\d+) samples")
# ig warnings that only say what host mode means (no container runtime needed)
_EXPECTED_WARNINGS = ("container-collection isn't available",)


class Collector:
    """Everything the gadget on one target reported: lock graphs, blocked threads,
    stacks, files, where processes run, loss counters. No I/O."""

    def __init__(self, keep_session: Optional[Callable[[int], bool]] = None,
                 on_deadlock: Optional[Callable[[Deadlock], None]] = None,
                 target: str = "", node: str = "",
                 alive: Optional[Callable[[int, int], Optional[bool]]] = None,
                 containers_only: bool = False, hang_seconds: float = DEFAULT_HANG_SECONDS,
                 lock_tracing: bool = True) -> None:
        self.store = LockGraphStore(keep_session)
        self.waits = WaitForTracker(keep_session, hang_seconds)
        self.misuses = MisuseTracker()
        self.on_deadlock = on_deadlock
        self.target = target
        self.node = node  # where the target runs, when the target knows it (a gadget pod's node)
        self.stacks: Dict[int, StackTrace] = {}
        # (pid, address) -> (file_id, offset): where a code address was resolved
        self.resolved: Dict[Tuple[int, int], Tuple[int, int]] = {}
        self.files: Dict[int, MappedFile] = {}
        # (pid, tid) -> a waiting thread's return addresses, read on its host where the
        # gadget's frame-pointer walk ended early (inside a C library)
        self.wait_stacks: Dict[Tuple[int, int], Tuple[int, ...]] = {}
        self.meta: Dict[Tuple[int, int], ProcessMeta] = {}
        self.seen: Dict[tuple, Tuple[float, float]] = {}  # finding key -> (first, last) detection time
        self.counters: Dict[str, int] = {name: 0 for name in COUNTER_NAMES.values()}
        self.process_counters: Dict[int, Dict[str, int]] = {}  # pid -> counter name -> count
        # (pid, start) -> wait site -> futex waits there outside every traced lock function
        self.untraced_waits: Dict[Tuple[int, int], Dict[int, int]] = {}
        # wait site -> (file_id, offset) of the word at its stack pointer (see UntracedWait.caller)
        self.untraced_callers: Dict[int, Tuple[int, int]] = {}
        # processes whose lock records arrived (a futex wait outside the lock
        # functions is no lock record: a Go program's are no sign it is traced)
        self._with_locks: Set[Tuple[int, int]] = set()
        # (pid, code object) -> what names it (CPython processes' Python frames)
        self.python_codes: Dict[Tuple[int, int], PythonCode] = {}
        self.ticks: Dict[str, int] = {}
        self.ring_buffer_lost = 0
        self.warnings: List[str] = []
        self.alive = alive  # can this host tell whether (pid, start) still runs?
        self.coverage = CoverageTable()
        self.probes_known = False  # this client probed each process's library itself
        # The gadget selects containers (mount namespaces) in the kernel: processes
        # this client found elsewhere on the host are out of scope.
        self.containers_only = containers_only
        self.namespaces_seen: Set[int] = set()
        self.snapshot_processes = 0  # the most processes one blocked-thread snapshot looked at
        self.snapshot_waits = 0  # waiting threads, summed over every snapshot
        # igdeadlock's own processes on the target's host: never in a report (the
        # gadget leaves them out; what it sent before it knew of them is dropped here)
        self.own_pids: Set[int] = set()
        # False: hangs only (snapshots), no lock is traced: no process is "traced" or "not traced"
        self.lock_tracing = lock_tracing
        self._run = 0

    def begin_run(self) -> None:
        """A new gadget run on the same target (a reconnection): its site numbers
        start over, and what it knew about blocked threads is gone."""
        self._run += 1
        snapshots = self.waits.snapshots
        self.waits = WaitForTracker(self.waits.keep_session, self.waits.hang_seconds)
        self.waits.snapshots = snapshots
        self.ticks = {}

    def _site(self, site: int) -> int:
        # the gadget's site ids use 64 bits; a later run's go above them
        return site | (self._run << 64) if self._run and site else site

    def _edge_sites(self, edge: LockEdge) -> LockEdge:
        return edge._replace(from_site=self._site(edge.from_site), to_site=self._site(edge.to_site))

    def consume(self, output: Any) -> List[object]:
        """Take one decoder output (any record; dispatched on its type, the
        hot path); returns the findings it completed."""
        kind = type(output)
        if kind is LockEdgeBatch:
            for process in set(map(_PROCESS_OF_KEY, output.keys)).difference(self._with_locks):
                self._lock_events(*process)
            if self._run:
                decode = output.decode
                output = output._replace(decode=lambda raw: self._edge_sites(decode(raw)))
            self.store.add_edge_batch(output)
        elif kind is LockEdge:
            self._with_locks.add((output.pid, output.process_start))
            self.store.add_edge(self._edge_sites(output) if self._run else output)
        elif kind is BlockedThread:
            if output.kind != LockKind.FUTEX:
                self._lock_events(output.pid, output.process_start)
            if self._run:
                output = output._replace(site=self._site(output.site))
            self.waits.thread_blocked(output)
        elif kind is MisuseEvent:
            self._lock_events(output.pid, output.process_start)
            if self._run:
                output = output._replace(site=self._site(output.site), held_site=self._site(output.held_site))
            found = self.misuses.add(output)
            return self._detected([found]) if found is not None else []
        elif kind is ThreadResumed:
            self.waits.thread_resumed(output.tid)
        elif kind is BlockedSnapshot:
            self.snapshot_processes = max(self.snapshot_processes, output.processes)
            self.snapshot_waits += len(output.threads)
            self.waits.snapshot_taken(output.threads)
            return self._waits_ticked(snapshot=True)
        elif kind is StackTrace:
            site = self._site(output.site)
            self.stacks[site] = output._replace(site=site)
            for (file_id, offset), address in zip(output.frames, output.addresses):
                if file_id:
                    self.resolved[(output.pid, address)] = (file_id, offset)
        elif kind is MappedFile:
            self.files[output.file_id] = output
        elif kind is ProcessMeta:
            # sent with a process's first lock record: it was traced
            self.namespaces_seen.add(output.mntns_id)
            self.meta[(output.pid, output.process_start)] = output
            if not self.lock_tracing:
                return []
            self.coverage.seen(output.pid, output.process_start, mntns_id=output.mntns_id)
            if (output.pid, output.process_start) in self._with_locks:
                self.coverage.lock_events_from(output.pid, output.process_start, "", output.mntns_id)
        elif kind is ProcessEvent:
            self.namespaces_seen.add(output.mntns_id)
            self.coverage.seen(output.pid, output.process_start, output.comm, output.exe,
                               output.mntns_id)
        elif kind is ProcessExit:
            self.store.process_exited(output)
            self.waits.process_exited(output.pid, output.process_start, output.exited)
        elif kind is PythonCode:
            self.python_codes[(output.pid, output.code)] = output
        elif kind is UntracedWait:
            sites = self.untraced_waits.setdefault((output.pid, output.process_start), {})
            site = self._site(output.site)
            sites[site] = sites.get(site, 0) + output.waits
            if output.caller_file:
                self.untraced_callers[site] = (output.caller_file, output.caller_offset)
            self.coverage.seen(output.pid, output.process_start, output.comm, "", output.mntns_id)
        elif kind is Counter:
            self.counters[output.name] = self.counters.get(output.name, 0) + output.times
            per_process = self.process_counters.setdefault(output.pid, {})
            per_process[output.name] = per_process.get(output.name, 0) + output.times
        elif kind is FetchTick:
            self.ticks[output.datasource] = self.ticks.get(output.datasource, 0) + 1
            if output.datasource == EDGES:
                if self.alive is not None and self.ticks[EDGES] % REAP_EVERY_FETCHES == 0:
                    self.reap()
                return self._detected(self.store.analyse())
            if output.datasource == BLOCKED:
                return self._waits_ticked()
        elif kind is LogMessage:
            lost = _LOST_SAMPLES.search(output.text)
            if lost:
                self.ring_buffer_lost += int(lost.group(1))
            elif output.level <= 3 and not any(h in output.text for h in _EXPECTED_WARNINGS):
                self.warnings.append(output.text)
        return []

    def _waits_ticked(self, snapshot: bool = False) -> List[object]:
        """The blocked threads are up to date: deadlocks and hangs confirmed now."""
        found = self._detected(self.waits.tick(snapshot))
        for deadlock in found:
            if self.on_deadlock is not None:
                self.on_deadlock(deadlock)  # type: ignore[arg-type]
        return found

    def _lock_events(self, pid: int, process_start: int) -> None:
        self._with_locks.add((pid, process_start))
        self.coverage.lock_events_from(pid, process_start, "", 0)

    def stack(self, site: int) -> Optional[StackTrace]:
        """An acquisition site's stack, with frames the gadget could not resolve
        (its VMA lookup gives up under contention) resolved from another stack
        of the same process: one code address is always named the same way."""
        stack = self.stacks.get(site)
        if stack is None or all(file_id for file_id, _ in stack.frames):
            return stack
        frames = tuple(frame if frame[0] else self.resolved.get((stack.pid, address), frame)
                       for frame, address in zip(stack.frames, stack.addresses))
        return stack._replace(frames=frames + stack.frames[len(frames):])

    def raw_stack(self, pid: int, addresses: Sequence[int]) -> StackTrace:
        """A stack of bare return addresses (a futex wait's), each named as
        another stack of the process named it; (0, address) where none did."""
        frames = tuple(self.resolved.get((pid, address), (0, address)) for address in addresses)
        return StackTrace(0, pid, frames, tuple(addresses))

    def reap(self) -> int:
        """Forget processes that are gone although no exit event said so (one was
        lost): their graphs are analysed once more and dropped. Returns how many."""
        gone = 0
        for pid, start in list(self.store.graphs):
            if self.alive is not None and self.alive(pid, start) is False:
                exit = ProcessExit(pid, start, 0, "")
                self.store.process_exited(exit)
                self.waits.process_exited(pid)
                gone += 1
        return gone

    def _detected(self, findings: Sequence[object]) -> List[object]:
        now = time.time()
        for finding in findings:
            first, _ = self.seen.get(finding.key, (now, now))  # type: ignore[attr-defined]
            self.seen[finding.key] = (first, now)  # type: ignore[attr-defined]
        return list(findings)

    def coverage_counts(self) -> Tuple[int, int]:
        """(traced, untraced) processes in scope (see ``containers_only``)."""
        return self.coverage.counts(self.namespaces_seen if self.containers_only else None)

    def stats(self, transport: Mapping[str, int]) -> Dict[str, object]:
        """The report's statistics; ``transport``: what the stream decoder counted
        (see StreamDecoder.counts())."""
        lost = {
            "server_dropped": transport["server_dropped"],
            "ring_buffer_lost": self.ring_buffer_lost,
            "decoder_rejected": transport["decoder_rejected"],
            "unknown_datasource": transport["unknown_datasource"],
            "before_gadget_info": transport["before_gadget_info"],
        }
        lost.update(self.counters)
        traced, untraced = self.coverage_counts()
        return {
            "processes_traced": traced,
            "processes_untraced": untraced,
            # processes whose lock-order graph was not examined to the end
            "analysis_incomplete": len(self.store.incomplete()),
            # processes where the search for a cycle stopped at MAX_CYCLE_LENGTH locks
            "cycle_search_cut": len(self.store.cut_short()),
            "edges_seen": self.store.stats.edges_seen,
            "processes_seen": self.store.stats.processes_seen,
            "processes_exited": self.store.stats.processes_exited,
            "processes_tracked": len(self.store.graphs),
            "fetches": self.ticks.get(EDGES, 0),
            "snapshots": self.waits.snapshots,
            "snapshot_waits": self.snapshot_waits,
            "edge_records_batched": transport["edge_records_batched"],
            # observations beyond MAX_EVIDENCE_PER_EDGE of one edge, not kept
            "evidence_dropped": self.store.evidence_dropped(),
            "events_lost": lost,
        }

    def processes(self) -> List[ProcessCoverage]:
        """Every process in scope that was seen, whether it was traced, and the
        limits reached in it that can hide a finding."""
        self.coverage.clear_limits()
        for pid, start in self._with_locks:
            self.coverage.lock_events_from(pid, start, "", 0)
        for key, left in self.store.incomplete().items():
            self.coverage.entry(key.pid, key.start).limits.append(
                f"analysis incomplete: {left} lock-order edge(s) not examined yet")
        for key in self.store.cut_short():
            self.coverage.entry(key.pid, key.start).limits.append(
                f"cycles longer than {MAX_CYCLE_LENGTH} locks were not looked for")
        meanings = {COUNTER_NAMES[stat]: meaning for stat, meaning in COUNTER_MEANINGS.items()}
        for pid, counts in sorted(self.process_counters.items()):
            for name, count in sorted(counts.items()):
                self.coverage.latest(pid).limits.append(f"{count} {meanings.get(name, name)}")
        entries = [e for e in self.coverage.processes(self.probes_known) if e.pid not in self.own_pids]
        if self.containers_only:
            entries = [e for e in entries if e.mntns_id in self.namespaces_seen]
        for entry in entries:
            entry.target = self.target
        return entries
