"""Running the gadget: connect, start, attach, collect, stop.

:class:`Collector` turns decoded records into graphs and findings (no I/O);
:func:`trace_command` runs one command under the gadget from start to report.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from igdeadlock import DEFAULT_IMAGE
from igdeadlock import attach as attach_mod
from igdeadlock.coverage import CoverageTable, ProcessCoverage
from igdeadlock.daemon import DaemonError, PrivateDaemon, find_ig
from igdeadlock.decode import (
    COUNTER_NAMES,
    BlockedThread,
    Counter,
    FetchTick,
    LockEdge,
    LockEdgeBatch,
    LogMessage,
    MappedFile,
    ProcessEvent,
    ProcessExit,
    ProcessMeta,
    StackTrace,
    StreamDecoder,
    ThreadResumed,
)
from igdeadlock.host.locklib import LockLibraryFinder, ProcessLibrary
from igdeadlock.launch import CommandError, CommandLauncher, check_command, terminate
from igdeadlock.graph import Cycle, Deadlock, LockGraphStore, WaitForTracker
from igdeadlock.proto import api_pb2
from igdeadlock.report import FindingView, Report, build_deadlock_findings, build_findings, link_related
from igdeadlock.symbolize import Frame, Symbolizer
from igdeadlock.wire import (
    DEFAULT_DAEMON_ADDRESS,
    Address,
    GadgetRun,
    GadgetService,
    TlsConfig,
    WireError,
    parse_address,
)

MAP_ITERATORS = ("edges", "stacks", "files", "counters", "blocked")
INTERRUPTED_BEFORE_START = "interrupt-before-start"  # Ctrl-C before COMMAND ran: nothing traced
HOST_PARAM = "operator.LocalManager.host"  # trace host processes too, not only containers
TREE_PID_PARAM = "operator.oci.ebpf.tree-pid"  # the gadget traces only this process's tree
PAUSE_NEW_PROCESSES_PARAM = "operator.oci.ebpf.pause-new-processes"
CONNECT_TIMEOUT = 3.0  # seconds to reach a gadget service before giving up
REAP_EVERY_FETCHES = 20  # how often graphs of vanished processes are looked for
_CLOCK_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
_LOST_SAMPLES = re.compile(r"lost (\d+) samples")
# ig warnings that only say what host mode means (no container runtime needed)
_EXPECTED_WARNINGS = ("container-collection isn't available",)


def process_start_ns(pid: int) -> Optional[int]:
    """When the process started, on the boot clock (ns, to clock-tick precision);
    None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[19]) * _CLOCK_TICK_NS  # field 22 of stat, counted after the comm
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start_ns: int) -> Optional[bool]:
    """Whether the process (pid, start time on the boot clock) still runs on this
    host: False when the pid is gone or belongs to a newer process."""
    if not os.path.exists(f"/proc/{pid}"):
        return False
    started = process_start_ns(pid)
    if started is None:
        return None
    return abs(started - start_ns) <= 2 * _CLOCK_TICK_NS


def mount_namespace_of(pid: int) -> int:
    """The inode of a process's mount namespace (0 when unknown), as the gadget reports it."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return 0


def running_pids() -> List[int]:
    """Every process on this host (its /proc)."""
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


class TraceError(RuntimeError):
    """Tracing could not start or went wrong; the message says what to do."""


class Collector:
    """Everything the gadget on one target reported: lock graphs, blocked threads,
    stacks, files, where processes run, loss counters. No I/O."""

    def __init__(self, keep_session: Optional[Callable[[int], bool]] = None,
                 on_deadlock: Optional[Callable[[Deadlock], None]] = None,
                 target: str = "", node: str = "",
                 alive: Optional[Callable[[int, int], Optional[bool]]] = None,
                 containers_only: bool = False) -> None:
        self.store = LockGraphStore(keep_session)
        self.waits = WaitForTracker(keep_session)
        self.on_deadlock = on_deadlock
        self.target = target
        self.node = node  # where the target runs, when the target knows it (a gadget pod's node)
        self.stacks: Dict[int, StackTrace] = {}
        self.files: Dict[int, MappedFile] = {}
        self.meta: Dict[Tuple[int, int], ProcessMeta] = {}
        self.seen: Dict[tuple, Tuple[float, float]] = {}  # finding key -> (first, last) detection time
        self.counters: Dict[str, int] = {name: 0 for name in COUNTER_NAMES.values()}
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
        self._run = 0

    def begin_run(self) -> None:
        """A new gadget run on the same target (a reconnection): its site numbers
        start over, and what it knew about blocked threads is gone."""
        self._run += 1
        self.waits = WaitForTracker(self.waits.keep_session)
        self.ticks = {}

    def _site(self, site: int) -> int:
        # site ids hold the CPU in bits 48-55; runs after the first go above them
        return site | (self._run << 56) if self._run and site else site

    def _edge_sites(self, edge: LockEdge) -> LockEdge:
        return edge._replace(from_site=self._site(edge.from_site), to_site=self._site(edge.to_site))

    def consume(self, output: object) -> List[object]:
        """Take one decoder output; returns the findings it completed."""
        kind = type(output)
        if kind is LockEdgeBatch:
            if self._run:
                decode = output.decode  # type: ignore[union-attr]
                output = output._replace(decode=lambda raw: self._edge_sites(decode(raw)))  # type: ignore
            self.store.add_edge_batch(output)  # type: ignore[arg-type]
        elif kind is LockEdge:
            self.store.add_edge(self._edge_sites(output) if self._run else output)  # type: ignore[arg-type]
        elif kind is BlockedThread:
            if self._run:
                output = output._replace(site=self._site(output.site))  # type: ignore[union-attr]
            self.waits.thread_blocked(output)  # type: ignore[arg-type]
        elif kind is ThreadResumed:
            self.waits.thread_resumed(output.tid)  # type: ignore[union-attr]
        elif kind is StackTrace:
            site = self._site(output.site)  # type: ignore[union-attr]
            self.stacks[site] = output._replace(site=site)  # type: ignore[union-attr]
        elif kind is MappedFile:
            self.files[output.file_id] = output  # type: ignore[union-attr]
        elif kind is ProcessMeta:
            # sent with a process's first lock record: it was traced
            self.namespaces_seen.add(output.mntns_id)  # type: ignore[union-attr]
            self.meta[(output.pid, output.process_start)] = output  # type: ignore[union-attr]
            self.coverage.lock_events_from(output.pid, output.process_start, "", output.mntns_id)  # type: ignore
        elif kind is ProcessEvent:
            self.namespaces_seen.add(output.mntns_id)  # type: ignore[union-attr]
            self.coverage.seen(output.pid, output.process_start, output.comm, output.exe,  # type: ignore
                               output.mntns_id)  # type: ignore[union-attr]
        elif kind is ProcessExit:
            self.store.process_exited(output)  # type: ignore[arg-type]
            self.waits.process_exited(output.pid)  # type: ignore[union-attr]
        elif kind is Counter:
            self.counters[output.name] = self.counters.get(output.name, 0) + output.count  # type: ignore
        elif kind is FetchTick:
            self.ticks[output.datasource] = self.ticks.get(output.datasource, 0) + 1  # type: ignore
            if output.datasource == "edges":  # type: ignore[union-attr]
                if self.alive is not None and self.ticks["edges"] % REAP_EVERY_FETCHES == 0:
                    self.reap()
                return self._detected(self.store.analyse())
            if output.datasource == "blocked":  # type: ignore[union-attr]
                deadlocks = self._detected(self.waits.tick())
                for deadlock in deadlocks:
                    if self.on_deadlock is not None:
                        self.on_deadlock(deadlock)  # type: ignore[arg-type]
                return deadlocks
        elif kind is LogMessage:
            lost = _LOST_SAMPLES.search(output.text)  # type: ignore[union-attr]
            if lost:
                self.ring_buffer_lost += int(lost.group(1))
            elif output.level <= 3 and not any(h in output.text for h in _EXPECTED_WARNINGS):  # type: ignore
                self.warnings.append(output.text)  # type: ignore[union-attr]
        return []

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

    def stats(self, decoder: StreamDecoder) -> Dict[str, object]:
        lost = {
            "server_dropped": decoder.stats.dropped_by_server,
            "ring_buffer_lost": self.ring_buffer_lost,
            "decoder_rejected": decoder.stats.rejected,
            "unknown_datasource": decoder.stats.unknown_datasource,
            "before_gadget_info": decoder.stats.before_info,
        }
        lost.update(self.counters)
        traced, untraced = self.coverage.counts()
        return {
            "processes_traced": traced,
            "processes_untraced": untraced,
            "edges_seen": self.store.stats.edges_seen,
            "processes_seen": self.store.stats.processes_seen,
            "processes_exited": self.store.stats.processes_exited,
            "processes_tracked": len(self.store.graphs),
            "fetches": self.ticks.get("edges", 0),
            "edge_records_batched": decoder.stats.batched,
            "events_lost": lost,
        }

    def processes(self) -> List[ProcessCoverage]:
        """Every process in scope that was seen, and whether it was traced."""
        entries = self.coverage.processes(self.probes_known)
        if self.containers_only:
            entries = [e for e in entries if e.mntns_id in self.namespaces_seen]
        for entry in entries:
            entry.target = self.target
        return entries

    def findings(self, now_boot_ns: Optional[int] = None, only: Optional[Sequence[object]] = None
                 ) -> List[FindingView]:
        """Findings, symbolized and placed (all of them, or ``only`` these cycles
        and deadlocks); ``now_boot_ns`` (the traced host's boot clock) gives
        blocked threads their waiting time."""
        symbolizer = Symbolizer(self.files)
        cache: Dict[int, Optional[List[Frame]]] = {}

        def stack_of(site: int) -> Optional[List[Frame]]:
            if site not in cache:
                stack = self.stacks.get(site)
                cache[site] = symbolizer.resolve(stack) if stack is not None else None
            return cache[site]

        deadlocks = [d for d in (only if only is not None else self.waits.deadlocks.values())
                     if isinstance(d, Deadlock)]
        cycles = [c for c in (only if only is not None else self.store.all_findings()) if isinstance(c, Cycle)]
        views = link_related(build_deadlock_findings(deadlocks, stack_of, now_boot_ns) +
                             build_findings(cycles, stack_of))
        keys = [d.key for d in deadlocks] + [c.key for c in cycles]
        return [self._place(view, key) for view, key in zip(views, keys)]

    def _place(self, view: FindingView, key: tuple) -> FindingView:
        meta = self.meta.get((view.pid, view.process_start))
        first, last = self.seen.get(key, (None, None))
        return replace(
            view,
            target=self.target,
            node=(meta.node if meta else "") or self.node,
            namespace=meta.namespace if meta else "",
            pod=meta.pod if meta else "",
            container=(meta.container or meta.runtime_container) if meta else "",
            container_id=meta.container_id if meta else "",
            first_seen=first,
            last_seen=last,
        )


@dataclass
class TraceOptions:
    command: Sequence[str]
    image: str = DEFAULT_IMAGE
    remote: Optional[str] = None
    tls: Optional[TlsConfig] = None
    timeout: Optional[float] = None
    fetch_interval_ms: int = 250
    attach: str = "auto"  # auto | client | ig
    ig: Optional[str] = None
    daemon_log: Optional[str] = None
    command_stdout: Optional[int] = None  # file descriptor for the command's stdout
    stop_on_deadlock: bool = False  # end the trace once threads are deadlocked


@dataclass
class TraceOutcome:
    findings: List[FindingView]
    stats: Dict[str, object]
    command_status: Optional[int]
    ended_by: str  # "exit", "timeout", "deadlock", "interrupt" or INTERRUPTED_BEFORE_START
    notes: List[str] = field(default_factory=list)
    target: str = ""
    processes: List[ProcessCoverage] = field(default_factory=list)

    @property
    def report(self) -> Report:
        return Report(self.findings, self.stats, [{"address": self.target, "state": "connected", "error": None}],
                      self.processes)


def gadget_params(fetch_interval_ms: int, image: str, host: bool = True) -> Dict[str, str]:
    """Parameters for an `ig daemon` (its LocalManager); ``host``: trace host
    processes too, not only containers (a traced command runs on the host)."""
    params = {
        HOST_PARAM: "true" if host else "false",
        "operator.oci.ebpf.map-fetch-interval": f"{fetch_interval_ms}ms",
    }
    if image.startswith("localhost/"):
        params["operator.oci.pull"] = "never"  # a local build: nothing to pull
    return params


def explain_image_error(image: str, error: Exception) -> TraceError:
    text = str(error)
    if "signature" in text or "verify" in text:
        return TraceError(f"the daemon refuses the unsigned image {image}: start it with "
                          f"`ig daemon --verify-image=false` (or sign the image) ({text})")
    if "not found" in text or "pull" in text or "manifest unknown" in text:
        return TraceError(f"the gadget image {image} is not in the daemon's image store: build it with "
                          f"`make gadget` (or `sudo ig image build --local -t {image} .` in the checkout)")
    return TraceError(f"the daemon could not start the gadget {image}: {text}")


class _EventPump:
    """Reads a gadget's event stream on a thread so the caller can wait with timeouts."""

    def __init__(self, run: GadgetRun) -> None:
        self.run = run
        self.queue: "queue.Queue[object]" = queue.Queue()
        self.error: Optional[Exception] = None
        self.ended = False
        self._thread = threading.Thread(target=self._read, name="gadget-events", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self.run.events():
                self.queue.put(event)
        except Exception as exc:  # the stream broke: reported by the caller
            self.error = exc
        self.queue.put(None)

    def next(self, timeout: float) -> Optional[api_pb2.GadgetEvent]:
        """The next event, or None on timeout or end of stream (see ``ended``)."""
        try:
            item = self.queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if item is None:
            self.ended = True
            return None
        return item  # type: ignore[return-value]


def local_daemon_answers(address: Address) -> bool:
    if not os.path.exists(address.location):
        return False
    try:
        with GadgetService(address) as service:
            service.server_info(timeout=2.0)
        return True
    except WireError:
        return False


def trace_command(options: TraceOptions, say: Callable[[str], None]) -> TraceOutcome:
    """Trace ``options.command`` and its process tree; report when it ends."""
    if not options.command:
        raise TraceError("no command to trace: igdeadlock trace [OPTIONS] -- COMMAND [ARG...]")
    try:
        check_command(options.command)
    except CommandError as exc:
        raise TraceError(str(exc)) from None
    local = options.remote is None or options.remote.startswith("unix://") or options.remote.startswith("/")
    if local and os.geteuid() != 0:
        raise TraceError("igdeadlock trace needs root to trace with eBPF: run it with sudo")

    private: Optional[PrivateDaemon] = None
    try:
        if options.remote is not None:
            address = parse_address(options.remote)
        elif local_daemon_answers(parse_address(DEFAULT_DAEMON_ADDRESS)):
            address = parse_address(DEFAULT_DAEMON_ADDRESS)
        else:
            try:
                private = PrivateDaemon(find_ig(options.ig), log_path=options.daemon_log)
                address = private.start()
            except DaemonError as exc:
                raise TraceError(str(exc)) from exc
        return _trace_with(address, options, say)
    except KeyboardInterrupt:
        # Ctrl-C while tracing was being set up: COMMAND never ran
        return TraceOutcome([], {}, None, INTERRUPTED_BEFORE_START)
    finally:
        if private is not None:
            private.stop()


class GadgetSession:
    """One run of the gadget on one gadget service, feeding a Collector.

    ``start()`` returns once the gadget is live: its first map fetch arrived
    and, on kernels where ig cannot attach uprobes, this client probes each
    process's own lock library (``tree_pid`` set: only that process tree's,
    one process at a time; otherwise every process's).
    """

    def __init__(self, service: GadgetService, image: str, params: Dict[str, str], collector: Collector,
                 attach: str = "auto", say: Callable[[str], None] = lambda message: None,
                 decoder: Optional[StreamDecoder] = None,
                 on_findings: Optional[Callable[[List[object]], None]] = None,
                 tree_pid: Optional[int] = None) -> None:
        self.service = service
        self.image = image
        self.params = dict(params)
        if tree_pid is not None:
            self.params[TREE_PID_PARAM] = str(tree_pid)
        self.tree_pid = tree_pid
        self.collector = collector
        self.decoder = decoder if decoder is not None else StreamDecoder(lazy_edges=True)
        self.decoder.new_stream()
        self.on_findings = on_findings
        self.attach_mode = attach
        self.say = say
        self.probes: Optional[attach_mod.ProbeSet] = None  # when this client attaches the uprobes
        self.libraries: Optional[attach_mod.LockLibraryProbes] = None
        self.finder: Optional[LockLibraryFinder] = None
        self.program_ids: Dict[str, int] = {}  # this run's programs, when the client attached them
        self.run: Optional[GadgetRun] = None
        self.pump: Optional[_EventPump] = None
        self._unprobeable_said = 0
        interval = self.params.get("operator.oci.ebpf.map-fetch-interval", "1000ms")
        self.interval = float(interval[:-2]) / 1000.0 if interval.endswith("ms") else 1.0

    def start(self, timeout: float = 60.0) -> None:
        try:
            info = self.service.gadget_info(self.image, self.params, extra_info=True)
        except WireError as exc:
            raise explain_image_error(self.image, exc) from exc
        client_attach = self.attach_mode == "client" or (
            self.attach_mode == "auto" and not attach_mod.kernel_has_kprobes())
        points = attach_mod.probe_points(info.extraInfo.data["ebpf.programs"].content) \
            if client_attach and "ebpf.programs" in info.extraInfo.data else []
        before = attach_mod.program_ids() if client_attach else set()
        if client_attach and self.tree_pid is not None:
            # probes go into each process of the tree alone: new processes wait for them
            self.params[PAUSE_NEW_PROCESSES_PARAM] = "true"
        self.run = self.service.run_gadget(self.image, self.params)
        self.pump = _EventPump(self.run)
        self._wait_until_live(timeout)
        if not client_attach:
            return
        try:
            address = self.service.address
            owner = attach_mod.socket_peer_pid(address.location) if address.scheme == "unix" else None
            self.program_ids = attach_mod.find_programs({p.program for p in points}, before, timeout=30.0,
                                                        owner=owner)
        except attach_mod.AttachError as exc:
            raise TraceError(f"{exc} (the client attaches uprobes itself on kernels without "
                             f"kprobes, and must run on the daemon's host for that)") from exc
        self.probes = attach_mod.ProbeSet(points, self.program_ids)
        self.finder = LockLibraryFinder({p.symbol for p in points})
        self.libraries = attach_mod.LockLibraryProbes(self.probes, self.finder, self.tree_pid is not None,
                                                      self._library_found)
        self.collector.probes_known = True
        self.say("igdeadlock: this kernel has no kprobes, so ig cannot attach uprobes; igdeadlock attaches "
                 "them itself, to each traced process's own C library")
        if self.tree_pid is None:
            libraries = self.libraries
            self._guarded(lambda: libraries.scan_running(running_pids()))

    def _library_found(self, found: ProcessLibrary, process_start: int) -> None:
        library = found.library
        start = process_start or process_start_ns(found.pid) or 0
        self.collector.coverage.probed(found.pid, start, found.comm, found.exe,
                                       library.path if library else None, library.flavor if library else None,
                                       library.static if library else False, found.reason,
                                       mount_namespace_of(found.pid))

    def _guarded(self, step: Callable[[], object]) -> None:
        """Run an attachment step; a library that cannot be probed ends the run."""
        try:
            step()
        except attach_mod.AttachError as exc:
            raise TraceError(str(exc)) from exc
        if self.probes is not None and len(self.probes.unprobeable) > self._unprobeable_said:
            new = self.probes.unprobeable[self._unprobeable_said:]
            self._unprobeable_said = len(self.probes.unprobeable)
            self.say("igdeadlock: these functions cannot carry a uprobe at their entry and are not "
                     "traced: " + ", ".join(new))

    def _follow(self, output: object) -> None:
        """Processes that start programs or join the traced tree get their library probed."""
        libraries = self.libraries
        if libraries is None:
            return
        if type(output) is ProcessEvent:
            event: ProcessEvent = output  # type: ignore[assignment]
            self._guarded(lambda: libraries.process_started(event.pid, event.process_start, bool(event.paused)))
        else:
            libraries.process_exited(output.pid, output.process_start)  # type: ignore[union-attr]

    def _wait_until_live(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout + self.interval
        while self.collector.ticks.get("edges", 0) == 0:
            if time.monotonic() > deadline:
                raise TraceError(f"the gadget did not start within {timeout:g}s")
            self.pump_events(0.1)

    def pump_events(self, timeout: float) -> None:
        """Process the events that arrive within ``timeout`` seconds (and all queued ones)."""
        assert self.pump is not None
        event = self.pump.next(timeout)
        while event is not None:
            for output in self.decoder.feed(event):
                if type(output) in (ProcessEvent, ProcessExit):
                    self._follow(output)
                found = self.collector.consume(output)
                if found and self.on_findings is not None:
                    self.on_findings(found)
            event = self.pump.next(0)
        if self.libraries is not None:
            self._guarded(self.libraries.poll)
        if self.pump.ended:
            if self.pump.error is not None:
                raise TraceError(f"the gadget stream ended: {self.pump.error}")
            raise TraceError("the gadget stopped unexpectedly")

    def final_fetch(self) -> None:
        """Wait for two more fetches of every map: they hold what happened until now."""
        target = {name: self.collector.ticks.get(name, 0) + 2 for name in MAP_ITERATORS}
        deadline = time.monotonic() + 10 * self.interval + 5.0
        while any(self.collector.ticks.get(name, 0) < want for name, want in target.items()):
            if time.monotonic() > deadline:
                return
            self.pump_events(0.05)

    def _detach(self) -> None:
        self.libraries = None  # nothing more gets probed
        if self.probes is not None:
            self.probes.detach()

    def stop(self) -> None:
        """Detach, stop the gadget and take in what it still sends."""
        self._detach()
        if self.run is None or self.pump is None:
            return
        self.run.stop()
        deadline = time.monotonic() + 5.0
        while not self.pump.ended and time.monotonic() < deadline:
            try:
                self.pump_events(0.1)
            except TraceError:
                break
        self.run.cancel()

    def stop_quietly(self) -> None:
        """stop(), for when the connection already failed: nothing may raise."""
        try:
            self.stop()
        except Exception:  # the stream is gone anyway; the probes are removed first
            self._detach()

    def __enter__(self) -> "GadgetSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _trace_with(address: Address, options: TraceOptions, say: Callable[[str], None]) -> TraceOutcome:
    params = gadget_params(options.fetch_interval_ms, options.image)
    with GadgetService(address, options.tls) as service:
        try:
            service.server_info(timeout=CONNECT_TIMEOUT)
        except WireError as exc:
            raise TraceError(str(exc)) from exc

        deadlocked: List[Deadlock] = []

        def on_deadlock(deadlock: Deadlock) -> None:
            deadlocked.append(deadlock)
            threads = ", ".join(str(t) for t in deadlock.threads)
            say(f"igdeadlock: deadlock: threads {threads} of pid {deadlock.process.pid} "
                f"({deadlock.comm}) are blocked in a lock cycle")

        local = address.scheme == "unix"
        # the gadget selects COMMAND's process tree in the kernel: no filter here
        collector = Collector(on_deadlock=on_deadlock, target=str(address),
                              node=socket.gethostname() if local else "", alive=process_alive if local else None)
        launcher = CommandLauncher(options.command, stdout=options.command_stdout)
        ended_by = "exit"
        started = False
        try:
            with GadgetSession(service, options.image, params, collector, options.attach, say,
                               tree_pid=launcher.pid) as session:
                try:
                    session.start()
                    launcher.release()
                    started = True
                    deadline = None if options.timeout is None else time.monotonic() + options.timeout
                    while launcher.process.poll() is None:
                        if deadline is not None and time.monotonic() >= deadline:
                            ended_by = "timeout"
                            break
                        if options.stop_on_deadlock and deadlocked:
                            ended_by = "deadlock"
                            break
                        session.pump_events(0.05)
                    terminate(launcher.process)
                    session.final_fetch()
                except KeyboardInterrupt:
                    ended_by = "interrupt" if started else INTERRUPTED_BEFORE_START
        finally:
            launcher.abort()
        collector.store.analyse()
        stats = collector.stats(session.decoder)
        status = launcher.process.returncode if started else None
        stats["command_exit_status"] = status
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if address.scheme == "unix" else None
        return TraceOutcome(collector.findings(now), stats, status, ended_by, list(collector.warnings),
                            str(address), collector.processes())
