"""Client-side uprobe attachment, for kernels where ig cannot attach them itself.

ig places a gadget's ``uprobe/LIB:SYMBOL`` programs only after reading the
library's real inode through a helper built on kprobes. On a kernel without
kprobes that step fails quietly and the programs stay unattached. When the
client runs on the daemon's host it can do the attachment instead: find the
programs the daemon loaded (by name, newer than the run), open one uprobe
perf event per program on each lock library's function and link the program
to it (BPF_LINK_CREATE, with a cookie naming the C library). Closing the
links detaches them.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from igdeadlock.gadget import (
    CLIENT_PLACED_PROGRAMS,
    DESTROY_FUNCTION_PROGRAM,
    LOCK_FUNCTION_PROGRAM,
    LOCK_FUNCTION_RETURN_PROGRAM,
    UNLOCK_FUNCTION_PROGRAM,
    UNLOCK_PROGRAM,
    attach_cookie,
)
from igdeadlock.host.bpf import Bpf, BpfError, ProgramInfo, machine, syscall
from igdeadlock.host.lockfunctions import FunctionTarget, LockFunctionFinder
from igdeadlock.host.locklib import PROCESS_GONE, REASON_NONE, FileId, LockLibrary, LockLibraryFinder, ProcessLibrary

# syscall numbers
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}  # syscall numbers
ENOTSUPP = 524  # the kernel cannot place a uprobe on that instruction
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
PERF_ATTR_SIZE = 120
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"
EVERY_PROCESS = -1  # perf_event_open's pid for "any process"


class AttachError(RuntimeError):
    """The client could not attach the gadget's uprobes."""


@dataclass(frozen=True)
class ProbePoint:
    """Where one program goes: ``uprobe/libc:pthread_mutex_lock`` and the like."""

    program: str
    library: str
    symbol: str
    retprobe: bool
    flavors: Optional[FrozenSet[str]] = None  # only on these C libraries (None: on all)

    @classmethod
    def from_section(cls, program: str, section: str) -> Optional["ProbePoint"]:
        kind, _, target = section.partition("/")
        if kind not in ("uprobe", "uretprobe") or ":" not in target:
            return None
        library, _, symbol = target.rpartition(":")
        if not library or not symbol:
            return None
        return cls(program, library, symbol, kind == "uretprobe")


# A program for the place where a function has just taken its lock, when the
# function's entry takes no uprobe: the entry program's name with this suffix,
# in a section ig leaves alone (as are CLIENT_PLACED_PROGRAMS).
TAKEN_SUFFIX = "_taken"
DISABLED_SECTION = "uprobe/gadget_program_disabled"


def probe_points(programs_json: bytes, unlock_checks: bool = False) -> List[ProbePoint]:
    """Probe points from IG's ``ebpf.programs`` extra information.

    Each entry has the program's section and its listing, whose first line is
    the program's name followed by a colon. Programs ig leaves alone that the
    client places (CLIENT_PLACED_PROGRAMS) go on the C libraries that need
    them; with ``unlock_checks`` the unlock probe goes on every one.
    """
    points = []
    for entry in json.loads(programs_json or b"[]"):
        section = entry.get("Section", "")
        source = entry.get("Source", "").lstrip()
        name = source.split(":", 1)[0].strip() if source else ""
        point = ProbePoint.from_section(name, section) if name else None
        if point is None and section == DISABLED_SECTION and name in CLIENT_PLACED_PROGRAMS:
            symbol, retprobe, flavors = CLIENT_PLACED_PROGRAMS[name]
            everywhere = unlock_checks and name == UNLOCK_PROGRAM
            point = ProbePoint(name, "libc", symbol, retprobe, None if everywhere else flavors)
        if point is not None:
            points.append(point)
    return points


def lock_taken_programs(programs_json: bytes) -> Set[str]:
    """Names of the gadget's lock-taken programs (see TAKEN_SUFFIX)."""
    names = set()
    for entry in json.loads(programs_json or b"[]"):
        source = entry.get("Source", "").lstrip()
        name = source.split(":", 1)[0].strip() if source else ""
        if entry.get("Section") == DISABLED_SECTION and name.endswith(TAKEN_SUFFIX):
            names.add(name)
    return names


def gadget_map(program_ids: Mapping[str, int], name: str) -> Optional[int]:
    """An fd of the gadget's map ``name`` (the kernel keeps 15 characters of a
    map's name), found among the maps of the gadget's programs; None if none."""
    bpf = Bpf()
    seen: Set[int] = set()
    for prog_id in program_ids.values():
        info = bpf.program(prog_id)
        for map_id in info.map_ids if info is not None else ():
            if map_id in seen:
                continue
            seen.add(map_id)
            try:
                fd = bpf.map_fd(map_id)
            except BpfError:
                continue
            if bpf.map_name(fd) == name[:15]:
                return fd
            os.close(fd)
    return None


def lock_function_programs(programs_json: bytes) -> Set[str]:
    """The gadget's programs for lock functions beyond pthread's, those it has
    (an image built before them has none)."""
    wanted = {LOCK_FUNCTION_PROGRAM, LOCK_FUNCTION_RETURN_PROGRAM, UNLOCK_FUNCTION_PROGRAM,
              DESTROY_FUNCTION_PROGRAM}
    names = set()
    for entry in json.loads(programs_json or b"[]"):
        source = entry.get("Source", "").lstrip()
        name = source.split(":", 1)[0].strip() if source else ""
        if entry.get("Section") == DISABLED_SECTION and name in wanted:
            names.add(name)
    return names if names == wanted else set()


def kernel_has_kprobes() -> bool:
    """ig's uprobe attachment needs kprobes; without them the client must attach."""
    return os.path.isdir(KPROBE_PMU)


def program_ids() -> Set[int]:
    try:
        return set(Bpf().program_ids())
    except BpfError as exc:
        raise AttachError(f"cannot list BPF programs: {exc}") from exc


def socket_peer_pid(path: str) -> Optional[int]:
    """The pid of the process serving a unix socket (SO_PEERCRED), if it answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(path)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", creds)[0]
    return pid or None


def programs_held_by(pid: int) -> Set[int]:
    """Ids of the BPF programs a process holds open (from /proc/PID/fdinfo)."""
    ids: Set[int] = set()
    try:
        entries = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return ids
    for entry in entries:
        try:
            with open(f"/proc/{pid}/fdinfo/{entry}") as handle:
                for line in handle:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            continue
    return ids


def find_programs(names: Iterable[str], exclude: Set[int], timeout: float,
                  owner: Optional[int] = None, owners: Iterable[int] = ()) -> Dict[str, int]:
    """Wait until programs with all these names, not in ``exclude``, are loaded.

    With ``owner`` (the daemon's pid) or ``owners`` (e.g. a gadget pod's
    processes) only programs those processes hold count: other gadget runs on
    the host (other daemons, other clients) load programs of the same names.
    Programs of one gadget run share maps: they are grouped by the maps they
    use, and the newest group (highest ids) that has every name wins.
    """
    wanted = set(names)
    holders = set(owners) | ({owner} if owner is not None else set())
    deadline = time.monotonic() + timeout
    bpf = Bpf()
    while True:
        candidates = set(bpf.program_ids()) - exclude
        if holders:
            held: Set[int] = set()
            for pid in holders:
                held |= programs_held_by(pid)
            candidates &= held
        fresh = [p for p in (bpf.program(i) for i in sorted(candidates)) if p is not None and p.name in wanted]
        for group in sorted(_share_maps(fresh), key=lambda g: max(p.id for p in g), reverse=True):
            newest: Dict[str, ProgramInfo] = {}
            for prog in group:
                if prog.name not in newest or prog.id > newest[prog.name].id:
                    newest[prog.name] = prog
            if set(newest) == wanted:
                return {name: prog.id for name, prog in newest.items()}
        if time.monotonic() > deadline:
            found = {p.name for p in fresh}
            missing = ", ".join(sorted(wanted - found)) or "(all present, but not as one gadget run)"
            raise AttachError(f"the gadget's programs did not appear on this host within {timeout:g}s: {missing}")
        time.sleep(0.1)


def _share_maps(programs: Sequence[ProgramInfo]) -> List[List[ProgramInfo]]:
    """Programs grouped by shared maps (connected components)."""
    parent = list(range(len(programs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: Dict[int, int] = {}
    for i, prog in enumerate(programs):
        for map_id in prog.map_ids:
            if map_id in owner:
                parent[root(i)] = root(owner[map_id])
            else:
                owner[map_id] = i
    groups: Dict[int, List[ProgramInfo]] = {}
    for i, prog in enumerate(programs):
        groups.setdefault(root(i), []).append(prog)
    return list(groups.values())


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _uprobe_event(pmu_type: int, path: bytes, offset: int, retprobe: bool, pid: int) -> int:
    """A disabled uprobe perf event on the file offset: in every process that maps
    the file (pid -1), or only in process ``pid`` (and its threads: the kernel
    filters uprobes by address space)."""
    number = _PERF_EVENT_OPEN.get(machine())
    if number is None:
        raise AttachError(f"client-side attachment is not supported on {machine()}")
    path_buf = ctypes.create_string_buffer(path)
    attr = ctypes.create_string_buffer(PERF_ATTR_SIZE)
    ctypes.c_uint32.from_buffer(attr, 0).value = pmu_type
    ctypes.c_uint32.from_buffer(attr, 4).value = PERF_ATTR_SIZE
    ctypes.c_uint64.from_buffer(attr, 8).value = 1 if retprobe else 0  # config: retprobe bit
    ctypes.c_uint64.from_buffer(attr, 40).value = 1  # flags: disabled until the program is set
    ctypes.c_uint64.from_buffer(attr, 56).value = ctypes.addressof(path_buf)  # config1: path
    ctypes.c_uint64.from_buffer(attr, 64).value = offset  # config2: file offset
    # an event of every process must name a CPU; one of a process runs on all of them
    cpu = 0 if pid == EVERY_PROCESS else -1
    return syscall(number, attr, ctypes.c_int(pid), ctypes.c_int(cpu), ctypes.c_int(-1),
                   ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))


def _uprobe_pmu_type() -> int:
    try:
        with open(os.path.join(UPROBE_PMU, "type")) as handle:
            return int(handle.read())
    except OSError as exc:
        raise AttachError("this kernel has no uprobe PMU (CONFIG_UPROBE_EVENTS)") from exc


# Closes the links it is given, in a process of its own.
_REAPER = "import os, sys\nfor fd in sys.argv[1:]:\n    os.close(int(fd))\n"


class LinkCloser:
    """Closes uprobe links off the caller's path.

    Each close waits for the kernel to retire the uprobe (an RCU grace period,
    about 0.1 s on the build machines) and closes are serialized in the kernel:
    30 probes take seconds. A thread closes the links of processes that exited
    while tracing goes on; at the end, ``hand_off()`` passes what is left to a
    short-lived process of its own, so that no report waits for it.
    """

    def __init__(self) -> None:
        self._queue: List[int] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: Optional[threading.Thread] = None

    def close_later(self, fds: Sequence[int]) -> None:
        with self._lock:
            self._queue.extend(fds)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="uprobe-closer", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                if self._stopped:
                    return
                if not self._queue:
                    self._wake.clear()
                    continue
                fd = self._queue.pop()
            _close_quietly(fd)

    def hand_off(self, fds: Sequence[int]) -> None:
        """Close these and everything still queued, in a process of its own."""
        with self._lock:
            self._stopped = True
            fds = list(fds) + self._queue
            self._queue = []
        self._wake.set()
        if not fds:
            return
        try:
            subprocess.Popen([sys.executable, "-I", "-S", "-c", _REAPER, *map(str, fds)], pass_fds=fds,
                             start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        except OSError:
            pass  # then our own exit closes them
        for fd in fds:
            _close_quietly(fd)  # the reaper holds the last reference: these return at once


class ProbeSet:
    """The uprobes this client placed for one gadget run: the gadget's probe
    points on each lock library, for every process that maps it or (tracing a
    command's tree) for one process at a time, so that other processes never
    hit them. Each probe carries the library's flavour as its attach cookie:
    the gadget reads lock owners where that C library keeps them."""

    def __init__(self, points: Sequence[ProbePoint], prog_ids: Mapping[str, int]) -> None:
        # Release and return probes first, so no acquisition is seen without them.
        self.points = sorted(points, key=lambda p: (not (p.retprobe or "unlock" in p.symbol), p.program))
        self.prog_ids = dict(prog_ids)
        self.libraries: Dict[FileId, LockLibrary] = {}  # every library probed so far
        self.unprobeable: List[str] = []  # "file:function" whose entry takes no uprobe
        self._links: Dict[Tuple[int, FileId], List[int]] = {}  # (pid or EVERY_PROCESS, file) -> link fds
        # lock functions beyond pthread's: (pid or EVERY_PROCESS, file, family) -> link fds
        self._function_links: Dict[Tuple[int, FileId, str], List[int]] = {}
        self.functions: List[FunctionTarget] = []  # every lock-function target probed so far
        self._prog_fds: Dict[str, int] = {}
        self._pmu_type: Optional[int] = None
        self._bpf = Bpf()
        self._closer = LinkCloser()

    def _prog_fd(self, program: str) -> int:
        fd = self._prog_fds.get(program)
        if fd is None:
            fd = self._prog_fds[program] = self._bpf.program_fd(self.prog_ids[program])
        return fd

    def covers(self, library: LockLibrary, pid: int = EVERY_PROCESS) -> bool:
        return (pid, library.file) in self._links or (EVERY_PROCESS, library.file) in self._links

    def attach(self, library: LockLibrary, pid: int = EVERY_PROCESS) -> bool:
        """Probe the library (for one process, or every one). False when it was
        probed already, or the process is gone; AttachError when it cannot be."""
        if self.covers(library, pid):
            return False
        if self._pmu_type is None:
            self._pmu_type = _uprobe_pmu_type()
        links: List[int] = []
        for point in self.points:
            if point.flavors is not None and library.flavor not in point.flavors:
                continue
            offset = library.offsets.get(point.symbol)
            program = point.program
            taken = library.taken.get(point.symbol)
            if taken is not None and program + TAKEN_SUFFIX in self.prog_ids:
                # its entry takes no uprobe: probe where the lock has just been taken
                offset, program = taken, program + TAKEN_SUFFIX
            if offset is None:
                continue  # e.g. musl has no pthread_mutex_clocklock
            try:
                perf_fd = _uprobe_event(self._pmu_type, library.open_path.encode(), offset, point.retprobe, pid)
            except OSError as exc:
                if exc.errno == ENOTSUPP:
                    # e.g. x86-64 glibc's pthread_spin_lock starts with a locked instruction
                    name = f"{os.path.basename(library.path)}:{point.symbol}"
                    if name not in self.unprobeable:
                        self.unprobeable.append(name)
                    continue
                self._closer.close_later(links)
                if exc.errno == errno.ESRCH and pid != EVERY_PROCESS:
                    return False  # the process exited meanwhile
                raise AttachError(f"uprobe on {library.path}:{point.symbol}: {exc.strerror}") from exc
            try:
                cookie = attach_cookie(library.flavor, library.sizes.get(point.symbol, 0))
                links.append(self._bpf.perf_event_link(self._prog_fd(program), perf_fd, cookie))
                fcntl.ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0)
            except OSError as exc:
                self._closer.close_later(links)
                raise AttachError(f"attaching {program} to {library.path}:{point.symbol}: "
                                  f"{exc.strerror}") from exc
            finally:
                os.close(perf_fd)  # the link keeps the event
        self._links[(pid, library.file)] = links
        self.libraries[library.file] = library
        return True

    def attach_functions(self, target: FunctionTarget, pid: int = EVERY_PROCESS) -> bool:
        """Probe one lock family's functions in one file (for one process, or
        every one). False when they were probed already, or the process is gone."""
        key = (pid, target.file, target.family.name)
        if key in self._function_links or (EVERY_PROCESS, target.file, target.family.name) in self._function_links:
            return False
        missing = [p.program for p in target.probes if p.program not in self.prog_ids]
        if missing:
            raise AttachError(f"the gadget image has no program {missing[0]}: rebuild it (make gadget)")
        if self._pmu_type is None:
            self._pmu_type = _uprobe_pmu_type()
        links: List[int] = []
        for probe in target.probes:
            try:
                perf_fd = _uprobe_event(self._pmu_type, target.open_path.encode(), probe.offset, probe.retprobe, pid)
            except OSError as exc:
                if exc.errno == ENOTSUPP:
                    name = f"{os.path.basename(target.path)}:{probe.symbol}"
                    if name not in self.unprobeable:
                        self.unprobeable.append(name)
                    continue
                self._closer.close_later(links)
                if exc.errno == errno.ESRCH and pid != EVERY_PROCESS:
                    return False
                raise AttachError(f"uprobe on {target.path}:{probe.symbol}: {exc.strerror}") from exc
            try:
                links.append(self._bpf.perf_event_link(self._prog_fd(probe.program), perf_fd, probe.cookie))
                fcntl.ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0)
            except OSError as exc:
                self._closer.close_later(links)
                raise AttachError(f"attaching {probe.program} to {target.path}:{probe.symbol}: "
                                  f"{exc.strerror}") from exc
            finally:
                os.close(perf_fd)
        self._function_links[key] = links
        self.functions.append(target)
        return True

    def probe_count(self) -> int:
        return sum(len(links) for links in self._links.values()) + sum(
            len(links) for links in self._function_links.values())

    def detach_process(self, pid: int) -> None:
        """Remove the probes placed for one process (it exited), in the background."""
        keys = [key for key in self._links if key[0] == pid]
        self._closer.close_later([fd for key in keys for fd in self._links.pop(key)])
        function_keys = [key for key in self._function_links if key[0] == pid]
        self._closer.close_later([fd for key in function_keys for fd in self._function_links.pop(key)])

    def detach(self) -> None:
        """Remove every probe. The programs stop running at once only where no
        other probe still holds them; the kernel retires the probes afterwards,
        in a process of their own."""
        links, self._links = self._links, {}
        function_links, self._function_links = self._function_links, {}
        self._closer.hand_off([fd for fds in [*links.values(), *function_links.values()] for fd in fds])
        for fd in self._prog_fds.values():
            _close_quietly(fd)
        self._prog_fds = {}

    def __enter__(self) -> "ProbeSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def _continue(pid: int) -> None:
    """SIGCONT a process the gadget stopped for us; it may be gone already."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _shares_our_root(pid: int) -> bool:
    try:
        theirs, ours = os.stat(f"/proc/{pid}/root"), os.stat("/")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


# How long after an exec the client keeps looking for the process's C library
# (the dynamic loader maps it a moment after the exec itself).
LIBRARY_SEARCH_SECONDS = 2.0
REASON_EXITED_EARLY = "exited before its C library could be found and probed"


class LockLibraryProbes:
    """Keeps every traced process's own lock library probed.

    Per process it finds the file that really holds its pthread lock functions
    (the host's glibc, a container's copy, musl, or the executable itself) and
    probes it: for every process at once, or, with ``per_process`` (tracing a
    command's tree), only in that process. What it finds, or why a process
    cannot be traced, goes to ``report(ProcessLibrary, process_start)``.
    """

    def __init__(self, probes: ProbeSet, finder: LockLibraryFinder, per_process: bool,
                 report: Callable[[ProcessLibrary, int], None],
                 clock: Callable[[], float] = time.monotonic,
                 functions: Optional[LockFunctionFinder] = None,
                 on_functions: Optional[Callable[[int, FunctionTarget], None]] = None) -> None:
        self.probes = probes
        self.finder = finder
        self.functions = functions  # lock functions beyond pthread's, probed with each process's library
        self.on_functions = on_functions  # told of each family found in a process
        self.per_process = per_process
        self.report = report
        self.clock = clock
        # pid -> (give up at, start, what is known: a library predicted before it ran, or the last look)
        self._pending: Dict[int, Tuple[float, int, ProcessLibrary]] = {}
        self._started: Dict[int, int] = {}  # pid -> start time of the process its probes are for

    def attach_library(self, library: LockLibrary, pid: int) -> bool:
        alone = self.per_process or library.per_process_only
        return self.probes.attach(library, pid if alone else EVERY_PROCESS)

    def attach_functions(self, library: Optional[LockLibrary], pid: int) -> None:
        """The lock functions beyond pthread's that the process's mapped objects define."""
        if self.functions is None:
            return
        libc = library.flavor if library is not None else "glibc"
        for target in self.functions.for_process(pid, library, libc):
            alone = self.per_process or target.per_process
            self.probes.attach_functions(target, pid if alone else EVERY_PROCESS)
            if self.on_functions is not None:
                self.on_functions(pid, target)

    def process_started(self, pid: int, process_start: int, paused: bool = False) -> None:
        """A process in scope started a program or was forked: probe its library,
        now or, while the loader is still mapping it, at a later poll(). A
        ``paused`` process (stopped by the gadget before its first instruction)
        is continued once its library is probed."""
        if self._started.get(pid, process_start) != process_start:
            # the pid was reused: the probes of the process before are not this one's
            self.process_exited(pid, self._started[pid])
        self._started[pid] = process_start
        self._pending[pid] = (self.clock() + LIBRARY_SEARCH_SECONDS, process_start,
                              ProcessLibrary(pid, "", "", None, REASON_EXITED_EARLY))
        try:
            if paused:
                self._probe_before_start(pid, process_start)
            if pid in self._pending:
                self._inspect(pid)
        finally:
            if paused:
                _continue(pid)

    def _probe_before_start(self, pid: int, process_start: int) -> None:
        """A process stopped right after its exec has only its program and loader
        mapped: the library its loader will map is predicted from the program,
        the way the loader finds it (same root as ours only), and probed."""
        found = self.finder.for_process(pid)
        if found.library is not None or found.reason == PROCESS_GONE or not _shares_our_root(pid):
            return
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            cwd = os.readlink(f"/proc/{pid}/cwd")
            with open(f"/proc/{pid}/environ", "rb") as handle:
                env = dict(item.decode("utf-8", "replace").partition("=")[::2]
                           for item in handle.read().split(b"\0") if b"=" in item)
            predicted = self.finder.for_command([exe], env, cwd)
        except OSError:  # gone, or a program the loader would refuse: nothing to predict
            return
        if predicted.library is not None:
            self.attach_library(predicted.library, pid)
            if self.functions is not None:
                # before it runs too: its first locks would be missed otherwise
                for target in self.functions.for_files(pid, predicted.objects, predicted.library,
                                                       predicted.library.flavor):
                    self.probes.attach_functions(target, pid if self.per_process or target.per_process
                                                 else EVERY_PROCESS)
                    if self.on_functions is not None:
                        self.on_functions(pid, target)
            give_up, _, _ = self._pending[pid]
            # what the process will map, known before it runs: it holds if it exits early
            self._pending[pid] = (give_up, process_start, replace(predicted, pid=pid, comm=found.comm))

    def _inspect(self, pid: int) -> None:
        give_up, process_start, _ = self._pending[pid]
        found = self.finder.for_process(pid)
        if found.library is not None:
            del self._pending[pid]
            self.attach_library(found.library, pid)
            self.attach_functions(found.library, pid)
        elif self.clock() >= give_up:
            del self._pending[pid]
        elif found.reason == PROCESS_GONE:
            self.process_exited(pid, process_start)
            return
        elif found.reason != REASON_NONE:
            del self._pending[pid]  # a static program, or one we cannot read: final
        else:
            if self._pending[pid][2].library is None:
                self._pending[pid] = (give_up, process_start, found)
            return  # not mapped yet: look again at the next poll
        self.report(found, process_start)

    def poll(self) -> None:
        """Look again at processes whose library was not mapped yet."""
        for pid in list(self._pending):
            self._inspect(pid)

    def process_exited(self, pid: int, process_start: int) -> None:
        if self._started.get(pid, process_start) != process_start:
            return  # an earlier process of that pid, already replaced
        self._started.pop(pid, None)
        pending = self._pending.pop(pid, None)
        if pending is not None:
            # gone before its library showed in its map: the one predicted and
            # probed before it ran, or else say so (lock records from it, if any,
            # still mark it traced)
            _, process_start, known = pending
            if known.library is None:
                known = replace(known, reason=REASON_EXITED_EARLY)
            self.report(known, process_start)
        self.probes.detach_process(pid)  # its own probes, if it had any

    def scan_running(self, pids: Iterable[int]) -> None:
        """Probe the libraries of processes that run already (watching a host)."""
        for pid in pids:
            found = self.finder.for_process(pid)
            if found.library is not None:
                self.attach_library(found.library, pid)
                self.attach_functions(found.library, pid)
            self.report(found, 0)
