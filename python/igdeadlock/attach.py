"""Client-side uprobe attachment, for kernels where ig cannot attach them itself.

ig places a gadget's ``uprobe/LIB:SYMBOL`` programs only after reading the
library's real inode through a helper built on kprobes. On a kernel without
kprobes that step fails quietly and the programs stay unattached. When the
client runs on the daemon's host it can do the attachment instead: find the
programs the daemon loaded (by name, newer than the run), open one uprobe
perf event per program on the library's function and hand it the program
(PERF_EVENT_IOC_SET_BPF). Closing the perf events detaches them.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set

from igdeadlock.bpfsys import Bpf, BpfError, ProgramInfo, machine, syscall
from igdeadlock.elf import ElfError, ElfFile

# syscall numbers
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}  # syscall numbers
ENOTSUPP = 524  # the kernel cannot place a uprobe on that instruction
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
PERF_ATTR_SIZE = 120
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"


class AttachError(RuntimeError):
    """The client could not attach the gadget's uprobes."""


@dataclass(frozen=True)
class ProbePoint:
    """Where one program goes: ``uprobe/libc:pthread_mutex_lock`` and the like."""

    program: str
    library: str
    symbol: str
    retprobe: bool

    @classmethod
    def from_section(cls, program: str, section: str) -> Optional["ProbePoint"]:
        kind, _, target = section.partition("/")
        if kind not in ("uprobe", "uretprobe") or ":" not in target:
            return None
        library, _, symbol = target.rpartition(":")
        if not library or not symbol:
            return None
        return cls(program, library, symbol, kind == "uretprobe")


def probe_points(programs_json: bytes) -> List[ProbePoint]:
    """Probe points from IG's ``ebpf.programs`` extra information.

    Each entry has the program's section and its listing, whose first line is
    the program's name followed by a colon.
    """
    points = []
    for entry in json.loads(programs_json or b"[]"):
        section = entry.get("Section", "")
        source = entry.get("Source", "").lstrip()
        name = source.split(":", 1)[0].strip() if source else ""
        point = ProbePoint.from_section(name, section) if name else None
        if point is not None:
            points.append(point)
    return points


def kernel_has_kprobes() -> bool:
    """ig's uprobe attachment needs kprobes; without them the client must attach."""
    return os.path.isdir(KPROBE_PMU)


@functools.lru_cache(maxsize=None)
def resolve_library(name: str) -> str:
    """A library path for a section's library part (a path or a bare name like ``libc``)."""
    if name.startswith("/"):
        return os.path.realpath(name)
    arch = {"x86_64": "x86-64", "aarch64": "AArch64"}.get(machine(), "")
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    candidates = []
    for line in listing.splitlines():
        soname, sep, path = line.strip().partition(" => ")
        if sep and soname.startswith(name + ".so"):
            candidates.append((arch not in soname, path.strip()))
    if candidates:
        return os.path.realpath(sorted(candidates)[0][1])
    # fall back to the copy this process itself has mapped
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if os.path.basename(path).startswith(name + ".so") or os.path.basename(path).startswith(name + "-"):
                return os.path.realpath(path)
    raise AttachError(f"cannot find library {name!r} on this host")


@functools.lru_cache(maxsize=8)
def _elf(path: str) -> ElfFile:
    try:
        return ElfFile.open(path)
    except (OSError, ElfError) as exc:
        raise AttachError(f"cannot read {path}: {exc}") from exc


def symbol_offset(path: str, symbol: str) -> int:
    """File offset of a function, as the uprobe PMU wants it."""
    elf = _elf(path)
    sym = elf.find_function(symbol)
    if sym is None:
        raise AttachError(f"{path} has no function {symbol}")
    offset = elf.vaddr_to_offset(sym.value)
    if offset is None:
        raise AttachError(f"{symbol} in {path} is not in a loaded segment")
    return offset


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
                  owner: Optional[int] = None) -> Dict[str, int]:
    """Wait until programs with all these names, not in ``exclude``, are loaded.

    With ``owner`` (the daemon's pid) only programs that process holds count.
    Programs of one gadget run share maps: they are grouped by the maps they
    use, and the newest group (highest ids) that has every name wins.
    """
    wanted = set(names)
    deadline = time.monotonic() + timeout
    bpf = Bpf()
    while True:
        candidates = set(bpf.program_ids()) - exclude
        if owner is not None:
            candidates &= programs_held_by(owner)
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


def _uprobe_event(pmu_type: int, path: bytes, offset: int, retprobe: bool) -> int:
    """A disabled uprobe perf event on every process's calls of the file offset."""
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
    return syscall(number, attr, ctypes.c_int(-1), ctypes.c_int(0), ctypes.c_int(-1),
                   ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))


@dataclass
class UprobeAttachment:
    """Uprobe perf events this client opened for a gadget's programs."""

    fds: List[int] = field(default_factory=list)
    described: List[str] = field(default_factory=list)
    unprobeable: List[str] = field(default_factory=list)  # functions whose entry takes no uprobe

    def attach(self, points: Sequence[ProbePoint], prog_ids: Mapping[str, int]) -> None:
        try:
            with open(os.path.join(UPROBE_PMU, "type")) as handle:
                pmu_type = int(handle.read())
        except OSError as exc:
            raise AttachError("this kernel has no uprobe PMU (CONFIG_UPROBE_EVENTS)") from exc
        # Release and return probes first, so no acquisition is seen without them.
        ordered = sorted(points, key=lambda p: (not (p.retprobe or "unlock" in p.symbol), p.program))
        for point in ordered:
            path = resolve_library(point.library)
            offset = symbol_offset(path, point.symbol)
            try:
                perf_fd = _uprobe_event(pmu_type, path.encode(), offset, point.retprobe)
            except OSError as exc:
                if exc.errno == ENOTSUPP:
                    # e.g. x86-64 glibc's pthread_spin_lock starts with a locked instruction
                    self.unprobeable.append(f"{os.path.basename(path)}:{point.symbol}")
                    continue
                self.detach()
                raise AttachError(f"uprobe on {path}:{point.symbol}: {exc.strerror}") from exc
            self.fds.append(perf_fd)
            try:
                prog_fd = Bpf().program_fd(prog_ids[point.program])
                try:
                    fcntl.ioctl(perf_fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
                    fcntl.ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0)
                finally:
                    os.close(prog_fd)
            except OSError as exc:
                self.detach()
                raise AttachError(f"attaching {point.program} to {path}:{point.symbol}: {exc.strerror}") from exc
            kind = "uretprobe" if point.retprobe else "uprobe"
            self.described.append(f"{kind} {path}:{point.symbol} -> {point.program}")

    def detach(self) -> None:
        """Close the perf events. Each close waits for the kernel to retire the
        uprobe (an RCU grace period), so they are closed in parallel."""
        fds, self.fds = self.fds, []
        closers = [threading.Thread(target=_close_quietly, args=(fd,)) for fd in fds]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join()

    def __enter__(self) -> "UprobeAttachment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()
