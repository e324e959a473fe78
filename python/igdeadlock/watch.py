"""Watching many gadget services at once: ig daemons and kubectl-gadget's gadget pods.

Each target runs in its own thread with its own Collector. A target that
fails is marked lost and retried with backoff; what it already sent is kept.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from igdeadlock.analysis.collector import Collector
from igdeadlock.analysis.coverage import ProcessCoverage
from igdeadlock.analysis.waitfor import DEFAULT_HANG_SECONDS
from igdeadlock.findings import collector_findings, process_coverage
from igdeadlock.host.lockfunctions import BUILT_IN_FAMILIES, LockFamily
from igdeadlock.host.procfs import process_alive
from igdeadlock.ig.decoder import StreamDecoder
from igdeadlock.ig.service import Address, GadgetService, TlsConfig
from igdeadlock.report.model import FindingView, Report
from igdeadlock.session import DEFAULT_SNAPSHOT_SECONDS, HOST_PARAM, INCOMPLETE_END_NOTE, GadgetSession

MAX_BACKOFF = 30.0

CONNECTING, CONNECTED, LOST, STOPPED = "connecting", "connected", "lost", "stopped"


@dataclass
class TargetSpec:
    """How to reach one gadget service and run the gadget there."""

    label: str  # what reports call it: its address, or the node of a gadget pod
    connect: Callable[[], Address]  # (re)establishes the way there, e.g. a port-forward
    params: Dict[str, str]
    tls: Optional[TlsConfig] = None
    node: str = ""
    close: Callable[[], None] = lambda: None
    local: bool = False  # on this host: the client may attach uprobes for it
    containers_only: bool = False  # it traces containers only (gadget pods), whatever its params say
    # the processes of this host that serve it, once connected (a gadget pod's on this node)
    server_pids: Callable[[], Sequence[int]] = lambda: ()


@dataclass
class TargetState:
    state: str = CONNECTING
    error: Optional[str] = None
    connects: int = 0
    end_note: str = ""  # what the end of its stream may lack
    interrupted: int = 0  # how often a running stream broke


class TargetRunner(threading.Thread):
    """Keeps one target's gadget running until stopped, reconnecting with backoff."""

    def __init__(self, spec: TargetSpec, image: str, attach: str, stop: threading.Event,
                 found: "queue.Queue[FindingView]", say: Callable[[str], None],
                 hang_seconds: float = DEFAULT_HANG_SECONDS, unlock_checks: bool = False,
                 lock_families: Sequence[LockFamily] = BUILT_IN_FAMILIES, hangs_only: bool = False,
                 snapshot_interval: float = DEFAULT_SNAPSHOT_SECONDS, snapshot_pids: Sequence[int] = ()) -> None:
        super().__init__(name=f"target {spec.label}", daemon=True)
        self.hangs_only = hangs_only
        self.snapshot_interval = snapshot_interval
        self.snapshot_pids = tuple(snapshot_pids)
        self.unlock_checks = unlock_checks
        self.lock_families = tuple(lock_families)
        self.spec = spec
        self.image = image
        self.attach = attach if spec.local else "ig"
        self.stop_event = stop
        self.found = found
        self.say = say
        self.collector = Collector(target=spec.label, node=spec.node, alive=process_alive if spec.local else None,
                                   containers_only=spec.containers_only or spec.params.get(HOST_PARAM) == "false",
                                   hang_seconds=hang_seconds, lock_tracing=not hangs_only)
        self.decoder = StreamDecoder(lazy_edges=True)
        self.status = TargetState()
        self._lock = threading.Lock()
        self._pending: List[object] = []  # new findings waiting for their stacks and files
        self._pending_since = 0

    def run(self) -> None:
        backoff = 1.0
        while not self.stop_event.is_set():
            session: Optional[GadgetSession] = None
            try:
                address = self.spec.connect()
                with GadgetService(address, self.spec.tls) as service:
                    service.server_info(timeout=5.0)
                    if self.status.connects:
                        self.collector.begin_run()
                        self._pending_since = 0
                    session = GadgetSession(service, self.image, self.spec.params, self.collector, self.attach,
                                            self.say, decoder=self.decoder, on_findings=self._report,
                                            unlock_checks=self.unlock_checks, lock_families=self.lock_families,
                                            server_pids=self.spec.server_pids() if self.spec.local else (),
                                            hangs_only=self.hangs_only, snapshot_interval=self.snapshot_interval,
                                            snapshot_pids=self.snapshot_pids)
                    session.start()
                    self._set(CONNECTED, None)
                    self.status.connects += 1
                    backoff = 1.0
                    while not self.stop_event.is_set():
                        session.pump_events(0.2)
                        self._flush_pending()
                    # hangs only: the maps record nothing, their last fetches have nothing to add
                    if not self.hangs_only and not session.final_fetch():
                        self.status.end_note = INCOMPLETE_END_NOTE.format(seconds=session.final_fetch_seconds())
                        self.say(f"igdeadlock: {self.spec.label}: {self.status.end_note}")
                    session.stop()
                    self._set(STOPPED, None)
                    return
            except Exception as exc:  # noqa: BLE001 - one failing target must not stop the others
                if session is not None:
                    session.stop_quietly()
                if self.status.state == CONNECTED:
                    self.status.interrupted += 1
                self._set(LOST, str(exc))
                self.spec.close()
                if self.stop_event.wait(backoff):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _set(self, state: str, error: Optional[str]) -> None:
        with self._lock:
            self.status.state = state
            if error is not None or state == CONNECTED:
                self.status.error = error

    def _report(self, new: List[object]) -> None:
        if not self._pending:
            self._pending_since = self.collector.ticks.get("files", 0)
        self._pending.extend(new)

    def _flush_pending(self) -> None:
        """Hand new findings over once the stacks and files of the same fetch are in:
        they are symbolized now, while their processes most likely still run."""
        if self._pending and self.collector.ticks.get("files", 0) > self._pending_since:
            new, self._pending = self._pending, []
            for view in collector_findings(self.collector, now_boot_ns=None, only=new, local=self.spec.local):
                self.found.put(view)

    def describe(self) -> Dict[str, object]:
        with self._lock:
            return {
                "address": self.spec.label,
                "node": self.spec.node,
                "state": self.status.state,
                "error": self.status.error,
                "connects": self.status.connects,
                "interrupted": self.status.interrupted,
            }


@dataclass
class Watch:
    """Many targets, one report."""

    specs: Sequence[TargetSpec]
    image: str
    attach: str = "auto"
    say: Callable[[str], None] = lambda message: None
    found: "queue.Queue[FindingView]" = field(default_factory=queue.Queue)
    runners: List[TargetRunner] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    analysis_seconds: float = 120.0  # bound on each target's last analysis, at the end
    hang_seconds: float = DEFAULT_HANG_SECONDS  # every thread waiting this long: all-threads-blocked
    unlock_checks: bool = False  # probe every mutex unlock (local targets)
    lock_families: Sequence[LockFamily] = BUILT_IN_FAMILIES  # lock functions beyond pthread's (local targets)
    hangs_only: bool = False  # no lock tracing: blocked-thread snapshots only
    snapshot_interval: float = DEFAULT_SNAPSHOT_SECONDS  # between two snapshots (0: none)
    snapshot_pids: Sequence[int] = ()  # snapshots of these processes only (none: all in scope)

    def start(self) -> None:
        self.runners = [TargetRunner(spec, self.image, self.attach, self.stop_event, self.found, self.say,
                                     self.hang_seconds, self.unlock_checks, self.lock_families, self.hangs_only,
                                     self.snapshot_interval, self.snapshot_pids)
                        for spec in self.specs]
        for runner in self.runners:
            runner.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for runner in self.runners:
            runner.join(max(0.1, deadline - time.monotonic()))
        for spec in self.specs:
            spec.close()

    def snapshots_taken(self) -> int:
        """Blocked-thread snapshots every target has taken (the fewest of them)."""
        return min((r.collector.waits.snapshots for r in self.runners), default=0)

    def settled(self) -> bool:
        """Every target is connected or has given up connecting once."""
        return all(r.status.connects or r.status.state == LOST for r in self.runners)

    def status_line(self) -> str:
        targets = [r.describe() for r in self.runners]
        connected = sum(1 for t in targets if t["state"] == CONNECTED)
        processes = sum(len(r.collector.store.graphs) for r in self.runners)
        edges = sum(r.collector.store.stats.edges_seen for r in self.runners)
        findings = sum(len(r.collector.store.findings) + len(r.collector.waits.deadlocks) + len(r.collector.waits.hangs)
                       for r in self.runners)
        lost = sum(_events_lost(r) for r in self.runners)
        untraced = sum(r.collector.coverage_counts()[1] for r in self.runners)
        line = (f"igdeadlock: {connected}/{len(targets)} targets connected, {processes} processes, "
                f"{edges} edges, {findings} findings, {lost} events lost, {untraced} processes not traced")
        # a target that is not connected says why
        why = [f"{t['address']} {t['state']}" + (f" ({t['error']})" if t["error"] else "")
               for t in targets if t["state"] != CONNECTED]
        return line + ("; " + "; ".join(why) if why else "")

    def report(self) -> Report:
        findings: List[FindingView] = []
        processes: List[ProcessCoverage] = []
        stats: Dict[str, object] = {}
        for runner in self.runners:
            runner.collector.store.finish(self.analysis_seconds)
            # a target on this host shares its boot clock: waits still going on say how long so far
            now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if runner.spec.local else None
            findings.extend(collector_findings(runner.collector, now, local=runner.spec.local))
            processes.extend(process_coverage(runner.collector, self.lock_families, runner.spec.local))
            _add_stats(stats, runner.collector.stats(runner.decoder.counts()))
        stats["targets_lost"] = sum(1 for r in self.runners if r.status.state == LOST)
        stats["streams_interrupted"] = sum(r.status.interrupted for r in self.runners)
        notes = [f"target {r.spec.label}: {r.status.end_note}" for r in self.runners if r.status.end_note]
        return Report(findings, stats, [r.describe() for r in self.runners], processes, notes)


def _events_lost(runner: TargetRunner) -> int:
    lost: Dict[str, int] = runner.collector.stats(runner.decoder.counts())["events_lost"]  # type: ignore[assignment]
    return sum(lost.values())


def _add_stats(total: Dict[str, object], more: Dict[str, object]) -> None:
    for key, value in more.items():
        if isinstance(value, dict):
            inner = total.setdefault(key, {})
            _add_stats(inner, value)  # type: ignore[arg-type]
        elif isinstance(value, int):
            total[key] = total.get(key, 0) + value  # type: ignore[operator]
