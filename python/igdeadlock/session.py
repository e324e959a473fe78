"""A run of the gadget on one gadget service: connect, start, place the probes
(where ig cannot), feed a Collector, stop. Used by ``trace`` and ``watch``.
It owns the run only: what the Collector gathered becomes findings and coverage
in ``findings.py``.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from igdeadlock.analysis.collector import Collector
from igdeadlock.gadget import (
    ANNOTATE_PARAM,
    HANGS_ONLY_PARAM,
    MAP_ITERATORS,
    PAUSE_NEW_PROCESSES_PARAM,
    SNAPSHOT_PROGRAM,
    TREE_PID_PARAM,
    WAITING,
    LockKind,
    snapshot_schedule,
)
from igdeadlock.host import attach as attach_mod
from igdeadlock.host import kernel as kernel_mod
from igdeadlock.host.bpf import Bpf
from igdeadlock.host.keeper import MappedFileKeeper, keeper_for
from igdeadlock.host.lockcode import LockCodeScanner
from igdeadlock.host.lockfunctions import BUILT_IN_FAMILIES, FunctionTarget, LockFamily, LockFunctionFinder
from igdeadlock.host.locklib import LockLibraryFinder, ProcessLibrary
from igdeadlock.host.procfs import (
    Mapping,
    file_mappings,
    learn_code_locations,
    mount_namespace_of,
    process_start_ns,
    running_pids,
)
from igdeadlock.host.python import python_process
from igdeadlock.host.snapshot import LocalSnapshots, SnapshotReader, kernel_known_wait
from igdeadlock.ig.decoder import StreamDecoder
from igdeadlock.ig.proto import api_pb2
from igdeadlock.ig.service import Address, GadgetRun, GadgetService, WireError
from igdeadlock.records import BlockedSnapshot, FetchTick, ProcessEvent, ProcessExit, StackTrace, WaitingThread

HOST_PARAM = "operator.LocalManager.host"  # trace host processes too, not only containers
CONNECT_TIMEOUT = 3.0  # seconds to reach a gadget service before giving up
MAX_KEPT_MAPPINGS = 4096  # processes whose mappings are kept for their stacks (the latest)
DEFAULT_SNAPSHOT_SECONDS = 2.0  # between two blocked-thread snapshots: a deadlock is confirmed by the second
FINAL_FETCH_SECONDS = 60.0  # beyond ten fetch intervals, for the last fetches after the end
INCOMPLETE_END_NOTE = ("the gadget's last fetches did not come within {seconds:g}s of the end: lock events of "
                       "the last moments may be missing from this report")


class TraceError(RuntimeError):
    """Tracing could not start or went wrong; the message says what to do."""


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
                 tree_pid: Optional[int] = None, unlock_checks: bool = False,
                 server_pids: Sequence[int] = (),
                 lock_families: Sequence[LockFamily] = BUILT_IN_FAMILIES,
                 hangs_only: bool = False, snapshot_interval: float = DEFAULT_SNAPSHOT_SECONDS,
                 snapshot_pids: Sequence[int] = (), tree_running: bool = False) -> None:
        self.service = service
        # the processes of this host behind a service reached over TCP (a gadget
        # pod's): only the programs they load are this run's
        self.server_pids = tuple(server_pids)
        self.unlock_checks = unlock_checks  # probe every mutex unlock (see CLIENT_PLACED_PROGRAMS)
        self.lock_families = tuple(lock_families)  # lock functions beyond pthread's (host/lockfunctions.py)
        self.functions: Optional[LockFunctionFinder] = None
        self.lock_code = LockCodeScanner()  # lock implementations of theirs no probe sees
        self.python: Set[int] = set()  # CPython processes whose Python frames the gadget walks
        self._python_map: Optional[int] = None  # fd of the gadget's python_processes map
        self.image = image
        self.params = dict(params)
        if tree_pid is not None:
            self.params[TREE_PID_PARAM] = str(tree_pid)
        self.tree_pid = tree_pid
        self.tree_running = tree_running  # tree_pid ran before the trace: probe it as it is
        self.collector = collector
        # the files its stacks go through, kept open in case their processes and
        # containers are gone by the report (a local daemon's: they are on this host)
        self.keeper = keeper_for(collector) if service.address.scheme == "unix" else None
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
        self.complete = False  # a final fetch took in everything that happened until it began
        # Blocked-thread snapshots (host/snapshot.py): a local daemon's are taken here, every
        # snapshot_interval seconds (0: never); a remote target's by IG, on the same schedule.
        self.hangs_only = hangs_only  # no lock tracing at all: the probes do nothing, none is placed
        if hangs_only:
            self.params[HANGS_ONLY_PARAM] = "true"
        self.snapshot_interval = snapshot_interval
        self.snapshot_pids = tuple(snapshot_pids)  # only these processes (none: all in scope)
        self.snapshots: Optional[LocalSnapshots] = None
        self._next_snapshot = 0.0
        self._waiting: List[WaitingThread] = []  # a remote target's snapshot, until its end
        if not self._on_this_host() and snapshot_interval:
            self.params[ANNOTATE_PARAM] = snapshot_schedule(int(snapshot_interval * 1000))
        self._libraries: Dict[Tuple[int, int], Optional[Tuple[str, str]]] = {}
        self._mappings: Dict[int, List[Mapping]] = {}  # pid -> its mappings when its library was probed

    def start(self, timeout: float = 60.0) -> None:
        local = self.service.address.scheme == "unix"
        here = self._on_this_host()
        if local:
            # a daemon on this host runs on this kernel: tell what it lacks up front
            missing = kernel_mod.missing_features()
            if missing:
                raise TraceError(kernel_mod.describe_missing(missing, kernel_mod.kernel_release()))
        client_attach = not self.hangs_only and (self.attach_mode == "client" or (
            self.attach_mode == "auto" and not attach_mod.kernel_has_kprobes()))
        # ig places the pthread probes only; where it does (auto, on a kernel with
        # kprobes) and the daemon runs here, this client places the other lock
        # families' (GLib, CPython, Abseil, declared ones)
        families_here = not self.hangs_only and bool(self.lock_families) and (client_attach or (
            self.attach_mode == "auto" and local))
        local_snapshots = here and self.snapshot_interval > 0
        before = attach_mod.program_ids() if families_here or here else set()
        if (client_attach or families_here) and self.tree_pid is not None:
            # probes go into each process of the tree alone: new processes wait for them
            self.params[PAUSE_NEW_PROCESSES_PARAM] = "true"
        # The program listing (which function each program probes) is asked for
        # while ig loads the gadget: each takes a while, and neither needs the other.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gadget-info") as pool:
            asked = pool.submit(self.service.gadget_info, self.image, self.params, True)
            try:
                self.run = self.service.run_gadget(self.image, self.params)
                self.pump = _EventPump(self.run)
                self._wait_until_live(timeout)
            except (TraceError, WireError):
                failed = asked.exception()
                if isinstance(failed, WireError):  # says best what is wrong with the image
                    raise explain_image_error(self.image, failed) from failed
                raise
            try:
                info = asked.result()
            except WireError as exc:
                raise explain_image_error(self.image, exc) from exc
        listing = info.extraInfo.data["ebpf.programs"].content if "ebpf.programs" in info.extraInfo.data else b""
        every_point = attach_mod.probe_points(listing, self.unlock_checks)
        owner = attach_mod.socket_peer_pid(self.service.address.location) if local else None
        if here:
            self._ignore_ourselves(before, owner)
        if local_snapshots and SNAPSHOT_PROGRAM.encode() in listing:
            self._start_snapshots(before, owner, {p.symbol for p in every_point})
        elif local_snapshots:
            self.say(f"igdeadlock: the image {self.image} takes no blocked-thread snapshots (it predates them): "
                     "a hang that began before tracing is not seen")
        points = every_point if client_attach else []
        taken = attach_mod.lock_taken_programs(listing) if client_attach else set()
        function_programs = attach_mod.lock_function_programs(listing) if families_here else set()
        if self.hangs_only:
            return  # no lock is traced: nothing to place
        if not client_attach:
            if self.unlock_checks:
                self.say("igdeadlock: --unlock-checks has no effect where ig attaches the probes: ig does not "
                         "place the glibc unlock probe (use --attach client on the daemon's host)")
            if not function_programs:
                if any(f.library is not None for f in self.lock_families):
                    self.say("igdeadlock: --lock-functions has no effect where ig attaches the probes and "
                             "igdeadlock does not (use --attach auto or client, on the daemon's host)")
                return
        try:
            self.program_ids = attach_mod.find_programs({p.program for p in points} | taken | function_programs,
                                                        before, timeout=30.0, owner=owner, owners=self.server_pids)
        except attach_mod.AttachError as exc:
            raise TraceError(f"{exc} (the client attaches uprobes itself on kernels without "
                             f"kprobes, and must run on the daemon's host for that)") from exc
        self.probes = attach_mod.ProbeSet(points, self.program_ids)
        # each process's C library is found either way (the semaphores of CPython live there)
        self.finder = self.finder or LockLibraryFinder({p.symbol for p in every_point})
        if function_programs:
            self.functions = LockFunctionFinder(self.lock_families)
        self.libraries = attach_mod.LockLibraryProbes(self.probes, self.finder, self.tree_pid is not None,
                                                      self._library_found, functions=self.functions,
                                                      on_functions=self._functions_found)
        if client_attach:
            # which processes are traced is known from the probes this client placed
            self.collector.probes_known = True
            self.say("igdeadlock: this kernel has no kprobes, so ig cannot attach uprobes; igdeadlock attaches "
                     "them itself, to each traced process's own C library")
        libraries = self.libraries
        if self.tree_pid is None:
            self._guarded(lambda: libraries.scan_running(running_pids()))
        elif self.tree_running:
            tree = self.tree_pid
            self._guarded(lambda: libraries.scan_running([tree]))

    def _start_snapshots(self, before: Set[int], owner: Optional[int], symbols: Set[str]) -> None:
        """Snapshots of a local daemon's host are taken here: the daemon's
        iterator program run from this client (see LocalSnapshots)."""
        try:
            found = attach_mod.find_programs({SNAPSHOT_PROGRAM}, before, timeout=30.0, owner=owner,
                                             owners=self.server_pids)
        except attach_mod.AttachError as exc:
            raise TraceError(f"{exc} (blocked-thread snapshots need the gadget's iterator program)") from exc
        if self.finder is None:
            self.finder = LockLibraryFinder(symbols)
        # igdeadlock's own processes are never reported: this one and its daemon
        excluded = {os.getpid(), *self.server_pids} | ({owner} if owner else set())
        reader = SnapshotReader(self._library_of, self.collector.files, self.collector.resolved, excluded)
        try:
            self.snapshots = LocalSnapshots(found[SNAPSHOT_PROGRAM], reader,
                                            lambda raw: self.decoder.raw_records(WAITING, raw),  # type: ignore
                                            self.snapshot_pids)
        except OSError as exc:
            raise TraceError(f"cannot run the gadget's snapshot iterator: {exc}") from exc
        for pid in self.snapshots.gone:
            self.say(f"igdeadlock: process {pid} ended before its snapshot could be taken")
        self.snapshot_now()

    def _ignore_ourselves(self, before: Set[int], owner: Optional[int]) -> None:
        """igdeadlock's own processes on this host (this one, its daemon, a
        gadget pod's) go into the gadget's ignored_processes before any probe
        is placed: never traced, never reported."""
        ours = {os.getpid(), *self.server_pids} | ({owner} if owner else set())
        self.collector.own_pids |= ours
        try:
            programs = attach_mod.find_programs({LOCK_PROGRAM}, before, timeout=30.0, owner=owner,
                                                owners=self.server_pids)
            fd = attach_mod.gadget_map(programs, IGNORED_MAP)
        except (attach_mod.AttachError, OSError):
            fd = None
        if fd is None:
            return  # an image without the map: the report still leaves them out
        try:
            for pid in sorted(ours):
                Bpf().map_update(fd, struct.pack("<I", pid), b"\x01")
        except OSError:
            pass  # full or gone: the report still leaves them out
        finally:
            os.close(fd)

    def _on_this_host(self) -> bool:
        """Whether the target's host is this one (a local daemon, or a gadget pod
        on this node): its snapshots are taken here, its waits read from /proc."""
        return self.service.address.scheme == "unix" or bool(self.server_pids)

    def _library_of(self, pid: int, start: int) -> Optional[Tuple[str, str]]:
        """The C library of a process with a thread in a snapshot (where its locks
        keep owners): its flavor and path; None if it has none."""
        if (pid, start) not in self._libraries:
            assert self.finder is not None
            library = self.finder.for_process(pid).library
            self._libraries[(pid, start)] = (library.flavor, library.path) if library is not None else None
        return self._libraries[(pid, start)]

    def snapshot_now(self) -> List[object]:
        """Take a blocked-thread snapshot of this host now; the findings it confirms."""
        if self.snapshots is None:
            return []
        self._next_snapshot = time.monotonic() + self.snapshot_interval
        try:
            blocked, processes = self.snapshots.take()
        except (OSError, ValueError) as exc:
            raise TraceError(f"the blocked-thread snapshot failed: {exc}") from exc
        return self._consume(BlockedSnapshot(tuple(blocked), processes))

    def _consume(self, output: Any) -> List[object]:
        found = self.collector.consume(output)
        if found and self.on_findings is not None:
            self.on_findings(found)
        return found

    def _functions_found(self, pid: int, target: FunctionTarget) -> None:
        """A CPython process: the gadget walks its Python frames at each new site."""
        if target.family.kind not in PYTHON_KINDS or pid in self.python:
            return
        process = python_process(pid)
        if process is None:
            return
        try:
            if self._python_map is None:
                self._python_map = attach_mod.gadget_map(self.program_ids, PYTHON_MAP)
            if self._python_map is None:
                return  # an image without Python frames
            Bpf().map_update(self._python_map, struct.pack("<I", pid), process.layout.pack(process.runtime))
        except OSError:
            return  # Python stacks are a help, never a reason to stop
        self.python.add(pid)

    def _library_found(self, found: ProcessLibrary, process_start: int) -> None:
        if found.library is not None:
            # what it maps now, kept: a frame the gadget could not place names from it, even
            # once the process is gone, as its stacks come after its exit (see _place_bare_frames)
            self._mappings.pop(found.pid, None)
            self._mappings[found.pid] = file_mappings(found.pid)
            while len(self._mappings) > MAX_KEPT_MAPPINGS:
                del self._mappings[next(iter(self._mappings))]  # the oldest
        if not self.collector.probes_known or found.pid in self.collector.own_pids:
            return  # ig placed the pthread probes: only lock records tell which processes it traces
        library = found.library
        start = process_start or process_start_ns(found.pid) or 0
        entry = self.collector.coverage.probed(found.pid, start, found.comm, found.exe,
                                               library.path if library else None,
                                               library.flavor if library else None,
                                               library.static if library else False, found.reason,
                                               mount_namespace_of(found.pid))
        if found.pid:
            # locks its code holds that no probe sees: said whether or not they ever wait
            code = self.lock_code.in_process(found.pid, (*([found.exe] if found.exe else []), *found.objects))
            entry.untraced_code = [(c.implementation, c.file) for c in code]

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

    def _follow(self, output: Any) -> None:
        """Processes that start programs or join the traced tree get their library probed."""
        libraries = self.libraries
        if libraries is None:
            return
        if type(output) is ProcessEvent:
            self._guarded(lambda: libraries.process_started(output.pid, output.process_start, bool(output.paused)))
        else:
            libraries.process_exited(output.pid, output.process_start)

    def _place_bare_frames(self, stack: StackTrace) -> None:
        """A stack the gadget captured while the process's memory map was busy
        (bpf_find_vma gives up when it cannot take the mmap lock at once, as
        when threads start) has frames with no file: they are placed from the
        process's mappings, now or as they were when its library was probed."""
        bare = [address for (file_id, _), address in zip(stack.frames, stack.addresses)
                if not file_id and (stack.pid, address) not in self.collector.resolved]
        if not bare:
            return
        mappings = file_mappings(stack.pid) or self._mappings.get(stack.pid)
        if mappings:
            learn_code_locations(stack.pid, bare, self.collector.files, self.collector.resolved, mappings)

    def _remote_snapshot(self, output: Any) -> None:
        """IG's snapshot of a remote target, record by record until its end. (A
        local daemon's may miss the host's other pid namespaces: this client
        takes those itself.)"""
        if self._on_this_host():
            return
        if type(output) is WaitingThread:
            self._waiting.append(output)
            return
        waiting, self._waiting = self._waiting, []
        self._consume(BlockedSnapshot(tuple(kernel_known_wait(w) for w in waiting), len({w.pid for w in waiting})))

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
                kind = type(output)
                if kind in (ProcessEvent, ProcessExit):
                    self._follow(output)
                elif self.keeper is not None and kind in MappedFileKeeper.RECORDS:
                    self.keeper.note(output)
                    if isinstance(output, StackTrace):
                        self._place_bare_frames(output)
                elif kind is WaitingThread or (isinstance(output, FetchTick) and output.datasource == WAITING):
                    self._remote_snapshot(output)
                    continue
                self._consume(output)
            event = self.pump.next(0)
        if self.snapshots is not None and time.monotonic() >= self._next_snapshot:
            self.snapshot_now()
        if self.libraries is not None:
            self._guarded(self.libraries.poll)
        if self.pump.ended:
            if self.pump.error is not None:
                release = kernel_mod.kernel_release() if self.service.address.scheme == "unix" else None
                explained = kernel_mod.explain_load_error(str(self.pump.error), release)
                raise TraceError(explained or f"the gadget stream ended: {self.pump.error}")
            raise TraceError("the gadget stopped unexpectedly")

    def final_fetch(self) -> bool:
        """Wait for two more fetches of every map: they hold what happened until
        now. False if they did not come within FINAL_FETCH_SECONDS (a daemon on
        a machine too busy to keep its fetch interval): then what happened last
        may be missing, and the report must say so."""
        target = {name: self.collector.ticks.get(name, 0) + 2 for name in MAP_ITERATORS}
        # two fetches take two intervals; the rest is for a loaded machine, and
        # costs nothing where the fetches come on time
        deadline = time.monotonic() + self.final_fetch_seconds()
        while any(self.collector.ticks.get(name, 0) < want for name, want in target.items()):
            if time.monotonic() > deadline:
                return False
            self.pump_events(0.05)
        self.complete = True
        return True

    def final_fetch_seconds(self) -> float:
        return 10 * self.interval + FINAL_FETCH_SECONDS

    def _detach(self) -> None:
        self.libraries = None  # nothing more gets probed
        if self.probes is not None:
            self.probes.detach()
        if self.snapshots is not None:
            self.snapshots.close()
            self.snapshots = None

    def stop(self) -> None:
        """Detach, stop the gadget and take in what it still sends (unless a
        final fetch already took in everything: then the stream is just closed)."""
        self._detach()
        if self.run is None or self.pump is None:
            return
        if self.complete:
            self.run.cancel()  # the daemon stops the gadget when its stream goes
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


# Lock kinds whose processes are CPython: their Python frames are walked.
PYTHON_KINDS = frozenset({LockKind.SEMAPHORE, LockKind.PYMUTEX})
PYTHON_MAP = "python_processes"  # the gadget's map of CPython processes (pid -> layout)
IGNORED_MAP = "ignored_process"  # ignored_processes, as the kernel keeps its name (15 characters)
LOCK_PROGRAM = "trace_uprobe_mutex_lock"  # a program of the gadget that uses that map
