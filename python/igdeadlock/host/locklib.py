"""Which file holds the pthread lock functions a process really calls.

Uprobes are placed on a file (an inode) at a file offset. A program calls the
lock functions of whatever C library it runs on: the host's glibc, another copy
of glibc (every container image has its own), musl's loader (musl-gcc, Alpine),
or the executable itself when it is statically linked. A probe on the host's
libc sees none of the others, so the tracer asks, per process:

* ``LockLibraryFinder.for_process(pid)``: a running process, from the files it
  has mapped (/proc/PID/maps);
* ``LockLibraryFinder.for_command(argv, env, cwd)``: a command that has not
  started yet, the way the kernel (``#!`` scripts, PT_INTERP) and glibc's ld.so
  (DT_NEEDED search) would find it, so probes can be in place before its first
  instruction.

The answer is a ``LockLibrary`` (the file, a path this host can hand to
perf_event_open, the C library's flavor and the functions' file offsets) or a
one-line reason why the process cannot be traced.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from igdeadlock.host.elf import EM_386, EM_AARCH64, EM_X86_64, STT_FUNC, DynamicInfo, ElfError, ElfFile, Symbol
from igdeadlock.host.overlay import real_file

GLIBC, MUSL = "glibc", "musl"

# Why a process cannot be traced (reports and tests use these exact texts).
REASON_GO = "no pthread lock functions (Go runtime)"
REASON_STATIC = "statically linked without pthread lock symbols"
REASON_NONE = "no pthread lock functions in its mapped files"
REASON_EXITED = "process exited before it could be inspected"
REASON_FOREIGN = "its pthread lock functions come from a C library that is neither glibc nor musl"
REASON_UNREADABLE = "its executable or C library cannot be opened from this host"
REASON_DENIED = "its memory map cannot be read (permission denied)"
PROCESS_GONE = REASON_EXITED  # the one reason that says nothing about the program, only that it is gone

# The function whose definition makes a file a lock library: every C library
# with pthreads defines it, and a program that locks at all calls it.
KEY_SYMBOL = "pthread_mutex_lock"

# Symbols only one C library defines (checked on Debian 12's glibc 2.36 and
# musl 1.2.3): glibc's libc.so.6 exports gnu_get_libc_version, static glibc
# programs always contain __libc_setup_tls and _nl_C_locobj; musl's libc.so (its
# loader too) exports __dls3, static musl programs contain __init_libc and
# __libc_start_init. (_dl_debug_state is no marker: static glibc has it as well as
# musl's loader.) Shared glibc files, libpthread of glibc < 2.34 included, also
# define GLIBC_* symbol versions.
GLIBC_MARKERS = ("gnu_get_libc_version", "__libc_setup_tls", "_nl_C_locobj")
MUSL_MARKERS = ("__dls3", "__init_libc", "__libc_start_init")
GO_MARKER_SYMBOL = "runtime.main"
GO_SECTIONS = (".go.buildinfo", ".gopclntab")

# File names of C libraries as mapped by processes (the kernel names the file a
# symlink points to). glibc < 2.34 keeps the pthread functions in libpthread,
# which programs bind to before libc's forwarders. musl's libc is its loader:
# /lib/ld-musl-ARCH.so.1 on Alpine (libc.musl-ARCH.so.1 links to it), and
# /usr/lib/ARCH-linux-musl/libc.so on Debian (ld-musl-ARCH.so.1 links to it).
_LIBPTHREAD_NAME = re.compile(r"libpthread(\.so\.0|-2\.\d+\.so)")
_LIBC_NAME = re.compile(r"libc(\.so\.6|-2\.\d+\.so)|ld-musl-[^/]+\.so\.1|libc\.musl-[^/]+\.so\.1|libc\.so")

# glibc's loader (x86_64, aarch64, i386) and the options it takes before a program
# when run as a command
_GLIBC_LOADER_NAME = re.compile(r"ld-linux(-[\w-]+)?\.so\.\d+")
_LOADER_OPTIONS_WITH_VALUE = ("--library-path", "--glibc-hwcaps-prepend", "--glibc-hwcaps-mask",
                              "--inhibit-rpath", "--audit", "--preload", "--argv0")

TASK_COMM_LEN = 16  # the kernel keeps 15 characters of a program's name
SHEBANG_MAX = 256  # the kernel reads this much of a #! line (BINPRM_BUF_SIZE)
MAX_INTERPRETERS = 4  # nested #! interpreters the kernel follows (BINPRM_MAX_RECURSION)
LD_SO_CACHE = "/etc/ld.so.cache"


class CommandError(OSError):
    """The command cannot be started; the message is one sentence naming it, and
    ``errno`` is what execve would have failed with (ENOENT, EACCES, ENOEXEC, ELOOP)."""

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)  # one argument: str() is the message alone
        self.errno = code


@dataclass(frozen=True)
class FileId:
    """Identity of a file: what uprobes are keyed by."""

    device: int  # st_dev as os.stat gives it
    inode: int

    @classmethod
    def of(cls, info: os.stat_result) -> "FileId":
        return cls(info.st_dev, info.st_ino)

    def __str__(self) -> str:
        return f"{os.major(self.device):02x}:{os.minor(self.device):02x} {self.inode}"


@dataclass(frozen=True)
class LockLibrary:
    """The file whose lock functions a process calls, and where they are in it."""

    file: FileId
    open_path: str  # a path this host can open and give to perf_event_open (uprobe PMU, config1)
    path: str  # the path as the process sees it (for reports)
    flavor: str  # GLIBC or MUSL: where the gadget reads a lock's owner
    static: bool  # the executable itself (statically linked)
    offsets: Mapping[str, int] = field(hash=False)  # wanted symbol -> file offset, those the file defines
    # wanted symbol -> size of its function: a lock function that calls another (musl's do) is told
    # apart from the program's own call by where the inner call returns to
    sizes: Mapping[str, int] = field(hash=False, default_factory=dict)
    # functions whose first instruction takes no uprobe -> the file offset where
    # they have just taken the lock (see LOCK_TAKEN_PATTERNS)
    taken: Mapping[str, int] = field(hash=False, default_factory=dict)
    # on an overlay whose layer could not be told: the same file may be probed under another
    # identity for another container, so it is probed for each process alone (never twice)
    per_process_only: bool = False


@dataclass(frozen=True)
class ProcessLibrary:
    pid: int  # 0 for a command not started yet
    comm: str
    exe: str  # as the process sees it ("" if unknown)
    library: Optional[LockLibrary]
    reason: str  # "" when library is set, else why the process cannot be traced
    # for a command not started yet: the objects its loader will map, in load order
    objects: Tuple[str, ...] = ()


@dataclass(frozen=True)
class LinkFacts:
    """How a file is loaded: cheap to read (headers and the dynamic section)."""

    interpreter: Optional[str]  # PT_INTERP; None for a statically linked program
    dynamic: DynamicInfo
    machine: int
    is64: bool


@dataclass(frozen=True)
class LockFacts:
    """What a file's symbols tell about locks: one pass over its symbol tables,
    which an executable's .symtab can make long, so read only when needed."""

    offsets: Mapping[str, int]  # wanted functions it defines -> file offsets
    sizes: Mapping[str, int]  # the same functions -> their sizes in bytes
    taken: Mapping[str, int]  # functions whose entry takes no uprobe -> where the lock is taken
    defines_locks: bool  # it defines a lock function (a static program links only those it uses)
    flavor: Optional[str]  # GLIBC, MUSL, or None (neither, or no symbols to tell)
    go: bool  # built by Go


@dataclass(frozen=True)
class Inspected:
    """One file as opened: its identity, the path that opened it, its facts."""

    file: FileId
    path: str
    link: LinkFacts
    locks: Optional[LockFacts]  # None unless asked for


def flavor_of(defined: Iterable[str], versions: Iterable[str]) -> Optional[str]:
    """GLIBC or MUSL from the marker symbols a file defines and its symbol versions."""
    names = set(defined)
    if names.intersection(GLIBC_MARKERS) or any(v.startswith("GLIBC_") for v in versions):
        return GLIBC
    if names.intersection(MUSL_MARKERS):
        return MUSL
    return None


def read_link_facts(elf: ElfFile) -> LinkFacts:
    return LinkFacts(elf.interpreter, elf.dynamic(), elf.machine, elf.is64)


# Where a lock function whose first instruction takes no uprobe has just taken
# the lock: x86-64 glibc's pthread_spin_lock is `lock decl (%rdi)`, `jne spin`,
# then (lock taken) `xor %eax,%eax`, with the lock still in %rdi. Function ->
# (its first bytes, the offset of the place after them).
LOCK_TAKEN_PATTERNS: Mapping[str, Tuple[bytes, int]] = MappingProxyType({
    "pthread_spin_lock": (b"\xf0\xff\x0f\x75", 5),
})


def lock_taken_offset(elf: ElfFile, symbol: str, offset: int) -> Optional[int]:
    """The file offset of the place where ``symbol`` (at ``offset``) has taken its
    lock, when its entry takes no uprobe and its code is one we know."""
    pattern = LOCK_TAKEN_PATTERNS.get(symbol)
    if pattern is None or elf.machine != EM_X86_64:
        return None
    prefix, after = pattern
    return offset + after if elf.read(offset, len(prefix)) == prefix else None


def read_lock_facts(elf: ElfFile, symbols: Iterable[str]) -> LockFacts:
    """The lock facts of one ELF file. Only functions (STT_FUNC) give offsets: a
    GNU indirect function's symbol is its resolver, which the program never calls."""
    wanted = set(symbols)
    found: Dict[str, Symbol] = elf.find_symbols(
        wanted | {KEY_SYMBOL, GO_MARKER_SYMBOL, *GLIBC_MARKERS, *MUSL_MARKERS}, kinds=None)
    offsets: Dict[str, int] = {}
    for name in wanted | {KEY_SYMBOL}:
        symbol = found.get(name)
        offset = elf.vaddr_to_offset(symbol.value) if symbol is not None and symbol.type == STT_FUNC else None
        if offset is not None:
            offsets[name] = offset
    taken = {name: lock_taken_offset(elf, name, offsets[name]) for name in LOCK_TAKEN_PATTERNS if name in offsets}
    return LockFacts(
        offsets=MappingProxyType({name: offsets[name] for name in sorted(wanted) if name in offsets}),
        taken=MappingProxyType({name: at for name, at in taken.items() if at is not None}),
        sizes=MappingProxyType({name: found[name].size for name in sorted(wanted) if name in offsets}),
        defines_locks=bool(offsets),
        flavor=flavor_of(found, elf.version_definitions()),
        go=GO_MARKER_SYMBOL in found or any(elf.section(name) is not None for name in GO_SECTIONS))


def library_rank(path: str) -> Optional[int]:
    """0 for glibc's libpthread, 1 for a C library, None for any other file name."""
    name = os.path.basename(path)
    if _LIBPTHREAD_NAME.fullmatch(name):
        return 0
    if _LIBC_NAME.fullmatch(name):
        return 1
    return None


# --- running processes -----------------------------------------------------

DELETED = " (deleted)"


@dataclass(frozen=True)
class MappedRegion:
    """One file-backed line of /proc/PID/maps."""

    range: str  # "start-end" in hex, also the entry's name in /proc/PID/map_files
    file: FileId
    path: str  # as the process sees it, without the " (deleted)" mark
    deleted: bool


def parse_maps(text: str) -> List[MappedRegion]:
    """File-backed mappings (inode != 0) of /proc/PID/maps, in address order."""
    mapped = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[4] == "0":
            continue
        major, _, minor = fields[3].partition(":")
        path = fields[5]
        deleted = path.endswith(DELETED)
        if deleted:
            path = path[:-len(DELETED)]
        mapped.append(MappedRegion(fields[0], FileId(os.makedev(int(major, 16), int(minor, 16)), int(fields[4])),
                                 path, deleted))
    return mapped


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()


def _quiet_read(path: str) -> str:
    try:
        return _read_text(path)
    except OSError:
        return ""


def _process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (after the parenthesised comm, which may hold anything)."""
    return _read_text(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[0]


# --- commands not started yet: the kernel's and ld.so's view ---------------


@dataclass(frozen=True)
class Abi:
    """What glibc's ld.so of one architecture searches by default."""

    cache_flags: int  # ld.so.cache entry flags it accepts (FLAG_ELF_LIBC6 | the architecture's)
    platform: str  # $PLATFORM
    directories: Tuple[str, ...]  # multiarch (Debian) and lib64 (Fedora) system directories


ABIS: Mapping[Tuple[int, bool], Abi] = {
    (EM_X86_64, True): Abi(0x0303, "x86_64", ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                                              "/lib64", "/usr/lib64", "/lib", "/usr/lib")),
    (EM_AARCH64, True): Abi(0x0A03, "aarch64", ("/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                                                "/lib64", "/usr/lib64", "/lib", "/usr/lib")),
    (EM_386, False): Abi(0x0003, "i686", ("/lib/i386-linux-gnu", "/usr/lib/i386-linux-gnu", "/lib", "/usr/lib")),
}
HOST_MACHINES = {"x86_64": (EM_X86_64, EM_386), "aarch64": (EM_AARCH64,), "i686": (EM_386,)}


@dataclass(frozen=True)
class CacheEntry:
    name: str  # the soname looked up, e.g. "libc.so.6"
    path: str
    flags: int  # library type and architecture (ldconfig's FLAG_*)
    hwcap: int  # nonzero for glibc-hwcaps and legacy hwcap subdirectory entries


_CACHE_NEW = b"glibc-ld.so.cache1.1"
_CACHE_OLD = b"ld.so-1.7.0"


def parse_ld_so_cache(data: bytes) -> List[CacheEntry]:
    """Entries of glibc's /etc/ld.so.cache ("glibc-ld.so.cache1.1", possibly after
    the old "ld.so-1.7.0" table, whose entries the new table repeats)."""
    start = 0
    if data.startswith(_CACHE_OLD):
        old_count = struct.unpack_from("<I", data, 12)[0]
        start = (16 + old_count * 12 + 7) & ~7  # the new table is 8-byte aligned after the old one
    if data[start:start + len(_CACHE_NEW)] != _CACHE_NEW:
        return []
    order = ">" if data[start + 28:start + 29] == b"\x03" else "<"  # 2: little endian, 3: big endian
    count = struct.unpack_from(order + "I", data, start + 20)[0]
    entry = struct.Struct(order + "iIIIQ")  # flags, key, value, osversion, hwcap

    def text(offset: int) -> str:  # offsets count from the new table's header
        begin = start + offset
        end = data.find(b"\0", begin)
        return data[begin:end if end >= 0 else len(data)].decode("utf-8", "surrogateescape")

    entries = []
    for i in range(count):
        base = start + 48 + i * entry.size
        if base + entry.size > len(data):
            break
        flags, key, value, _osversion, hwcap = entry.unpack_from(data, base)
        entries.append(CacheEntry(text(key), text(value), flags, hwcap))
    return entries


def split_search_path(text: str, separators: str = ":") -> List[str]:
    """Directories of a search list; an empty element is the current directory."""
    return re.split(f"[{re.escape(separators)}]", text) if text else []


def expand_dst(directory: str, origin: str, platform: str) -> str:
    """ld.so's dynamic string tokens $ORIGIN and $PLATFORM (also as ${...})."""
    directory = re.sub(r"\$(ORIGIN\b|\{ORIGIN\})", lambda _: origin, directory)
    return re.sub(r"\$(PLATFORM\b|\{PLATFORM\})", lambda _: platform, directory)


def parse_shebang(head: bytes) -> Tuple[str, Optional[str]]:
    """Interpreter and optional single argument of a "#!" line, split as the kernel does."""
    line = head[2:].split(b"\n", 1)[0].strip(b" \t")
    words = re.split(rb"[ \t]", line, maxsplit=1)
    argument = words[1].strip(b" \t") if len(words) > 1 else b""
    return (words[0].decode("utf-8", "surrogateescape"),
            argument.decode("utf-8", "surrogateescape") if argument else None)


def env_program(argument: str) -> Optional[str]:
    """The program ``#!/usr/bin/env ARGUMENT`` runs: the first word that is not an
    option or a VAR=value assignment ("-S" splits the argument into words)."""
    for word in argument.split():
        if word.startswith("-S") and len(word) > 2:
            word = word[2:]
        elif word.startswith("-") or "=" in word:
            continue
        return word
    return None


def exec_problem(path: str) -> Optional[Tuple[int, str]]:
    """Why execve would refuse the file (errno, words), or None if it would run it."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return errno.ENOENT, "no such file or directory"
    except PermissionError:  # a directory on the way that we may not search
        return errno.EACCES, "permission denied"
    if stat.S_ISDIR(info.st_mode):
        return errno.EACCES, "permission denied (a directory)"
    if not stat.S_ISREG(info.st_mode):
        return errno.EACCES, "permission denied (not a regular file)"
    if not os.access(path, os.X_OK):  # also false on a noexec mount
        return errno.EACCES, "permission denied (not executable)"
    return None


def find_program(name: str, search_path: str, cwd: str) -> str:
    """The file a command name runs, searched like execvp and Python's subprocess:
    a name with a slash is a path (relative to cwd), otherwise the first
    executable file in the PATH directories; a file found but not executable is
    reported only when no later directory has one that is."""
    path, problem = search_program(name, search_path, cwd)
    if path is None:
        raise CommandError(f"{name}: {problem[1]}", problem[0])
    return path


def search_program(name: str, search_path: str, cwd: str) -> Tuple[Optional[str], Tuple[int, str]]:
    """``find_program`` without the exception: (path, _) or (None, (errno, words))."""
    if "/" in name:
        path = os.path.join(cwd, name)
        problem = exec_problem(path)
        return (path, (0, "")) if problem is None else (None, problem)
    refused = None
    for directory in search_path.split(":"):
        path = os.path.join(cwd, directory, name)
        problem = exec_problem(path)
        if problem is None:
            return path, (0, "")
        if refused is None and problem[0] != errno.ENOENT:
            refused = problem
    return None, refused or (errno.ENOENT, "command not found")


@dataclass(frozen=True)
class _Linked:
    """An object in ld.so's load order and what searching its dependencies needs."""

    seen: Inspected
    origin: str  # $ORIGIN: its directory
    loader: Optional["_Linked"]  # whose DT_NEEDED brought it in; None for the executable

    @property
    def dynamic(self) -> DynamicInfo:
        return self.seen.link.dynamic

    def rpath(self) -> Optional[str]:
        return None if self.dynamic.runpath else self.dynamic.rpath  # a DT_RUNPATH disables DT_RPATH


# --- the finder --------------------------------------------------------------


class LockLibraryFinder:
    """Finds lock libraries of processes and commands; parses each file once."""

    def __init__(self, symbols: Iterable[str]) -> None:
        self.symbols: Tuple[str, ...] = tuple(dict.fromkeys(symbols))  # the function names the gadget probes
        # keyed by identity, size and mtime: an inode number can be reused by another file
        self._links: Dict[Tuple[FileId, int, int], LinkFacts] = {}
        self._locks: Dict[Tuple[FileId, int, int], LockFacts] = {}
        self._ld_cache: Optional[List[CacheEntry]] = None

    # files

    def _inspect(self, path: str, expected: Optional[FileId] = None, locks: bool = False) -> Optional[Inspected]:
        """The ELF file at path; None if it cannot be read, is no usable ELF file,
        or (with ``expected``) is another file. The identity comes from the opened
        file itself, so a file replaced meanwhile is never taken for another."""
        try:
            elf = ElfFile.map(path)
        except (OSError, ElfError):
            return None
        # a corrupt file (offsets out of range, a truncated table) must not stop a scan of the host
        corrupt = (ElfError, struct.error, IndexError)
        with elf:
            assert elf.stat is not None
            file = FileId.of(elf.stat)
            if expected is not None and file != expected:
                return None
            key = (file, elf.stat.st_size, elf.stat.st_mtime_ns)
            try:
                if key not in self._links:
                    self._links[key] = read_link_facts(elf)
                if locks and key not in self._locks:
                    self._locks[key] = read_lock_facts(elf, self.symbols)
            except corrupt:
                return None
            return Inspected(file, path, self._links[key], self._locks[key] if locks else None)

    def _with_locks(self, seen: Inspected) -> Optional[Inspected]:
        return seen if seen.locks is not None else self._inspect(seen.path, seen.file, locks=True)

    def _library(self, seen: Inspected, path: str, static: bool, pid: int = 0) -> LockLibrary:
        assert seen.locks is not None and seen.locks.flavor is not None
        file, open_path, per_process_only = seen.file, seen.path, False
        if pid:
            file, open_path, per_process_only = _real_identity(pid, path, seen)
        return LockLibrary(file, open_path, path, seen.locks.flavor, static, seen.locks.offsets,
                           seen.locks.sizes, seen.locks.taken, per_process_only)

    # running processes

    def for_process(self, pid: int) -> ProcessLibrary:
        """The lock library of a running process, from /proc/PID/{maps,exe,comm,root}."""
        base = f"/proc/{pid}"
        try:
            comm = _read_text(f"{base}/comm").rstrip("\n")
            maps = _read_text(f"{base}/maps")
            state = _process_state(pid)
        except (FileNotFoundError, ProcessLookupError):
            return ProcessLibrary(pid, "", "", None, REASON_EXITED)
        except PermissionError:  # not ours to read (no CAP_SYS_PTRACE over it, or hidden from us)
            return ProcessLibrary(pid, _quiet_read(f"{base}/comm").rstrip("\n"), "", None, REASON_DENIED)
        try:
            exe = os.readlink(f"{base}/exe")
        except OSError:  # a kernel thread, or a zombie that has let go of its memory
            exe = ""
        if exe.endswith(DELETED):
            exe = exe[:-len(DELETED)]
        if state in ("Z", "X"):
            return ProcessLibrary(pid, comm, exe, None, REASON_EXITED)

        def outcome(library: Optional[LockLibrary], reason: str = "") -> ProcessLibrary:
            return ProcessLibrary(pid, comm, exe, library, reason)

        mapped = parse_maps(maps)
        unreadable = foreign = False
        exe_map = next((m for m in mapped if m.path == exe), None) if exe else None
        program: Optional[Inspected] = None
        if exe_map is not None:
            program = self._inspect_mapped(pid, exe_map)
            unreadable = program is None
            if program is not None and program.link.interpreter is None:  # statically linked
                program = self._with_locks(program)
                if program is not None and program.locks is not None and program.locks.defines_locks:
                    if program.locks.flavor is not None:
                        return outcome(self._library(program, exe_map.path, static=True, pid=pid))
                    foreign = True
        # libpthread before libc, then in address order; each file once
        ranked: Dict[FileId, Tuple[int, int, MappedRegion]] = {}
        for index, m in enumerate(mapped):
            rank = library_rank(m.path)
            if rank is not None and m.file not in ranked:
                ranked[m.file] = (rank, index, m)
        for _rank, _index, m in sorted(ranked.values(), key=lambda item: item[:2]):
            seen = self._inspect_mapped(pid, m, locks=True)
            if seen is None:
                unreadable = True
            elif seen.locks is not None and seen.locks.defines_locks:
                if seen.locks.flavor is not None:
                    return outcome(self._library(seen, m.path, static=False, pid=pid))
                foreign = True
        if not os.path.exists(base) or _still_zombie(pid):
            return outcome(None, REASON_EXITED)
        if foreign:
            return outcome(None, REASON_FOREIGN)
        program = self._with_locks(program) if program is not None else None
        if program is not None and program.locks is not None and program.locks.go:
            return outcome(None, REASON_GO)
        if program is not None and program.link.interpreter is None:
            return outcome(None, REASON_STATIC)
        return outcome(None, REASON_UNREADABLE if unreadable else REASON_NONE)

    def _inspect_mapped(self, pid: int, mapped: MappedRegion, locks: bool = False) -> Optional[Inspected]:
        """A mapped file, opened through a path this host can open (and hand to
        perf_event_open).

        In order: the path itself (right when the process shares our mount
        namespace, and it outlives the process), the path under the process's
        root (another mount namespace: a container), and the mapping's entry in
        map_files (a deleted or replaced file, or one out of reach of both). Each
        must be the very file mapped (same device and inode): a path in our
        namespace can name another file than the same path in the process's.
        """
        candidates = [] if mapped.deleted or not mapped.path.startswith("/") else [
            mapped.path, f"/proc/{pid}/root{mapped.path}"]
        candidates.append(f"/proc/{pid}/map_files/{mapped.range}")
        for path in candidates:
            seen = self._inspect(path, expected=mapped.file, locks=locks)
            if seen is not None:
                return seen
        return None

    # commands not started yet

    def for_command(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> ProcessLibrary:
        """The lock library a command will use, before it runs. Raises CommandError
        when it cannot be started (not found, not executable, bad #! interpreter,
        missing program interpreter, not a program for this machine)."""
        if not argv:
            raise CommandError("an empty command cannot be run", errno.ENOENT)
        name = argv[0]
        cwd = os.path.abspath(cwd)
        program = find_program(name, env.get("PATH", os.defpath), cwd)
        image = self._image(name, program, env, cwd)
        comm = os.path.basename(program)[:TASK_COMM_LEN - 1]  # the kernel names a script's process after the script
        exe = os.path.realpath(image)
        seen = self._inspect(image)
        if seen is None:
            raise CommandError(f"{name}: exec format error (not a valid ELF file)", errno.ENOEXEC)
        if seen.link.machine not in HOST_MACHINES.get(os.uname().machine, (seen.link.machine,)):
            raise CommandError(f"{name}: exec format error (a program for another architecture)", errno.ENOEXEC)

        loaded: List[str] = [image]

        def outcome(library: Optional[LockLibrary], reason: str = "") -> ProcessLibrary:
            return ProcessLibrary(0, comm, exe, library, reason, tuple(loaded))

        def found(lib: Inspected, static: bool) -> ProcessLibrary:
            assert lib.locks is not None
            if lib.locks.flavor is None:
                return outcome(None, REASON_FOREIGN)
            real = os.path.realpath(lib.path)  # as the kernel will name it in the process's maps
            return outcome(self._library(Inspected(lib.file, real, lib.link, lib.locks), real, static))

        def without_library(program: Inspected, reason: str) -> ProcessLibrary:
            full = self._with_locks(program)
            return outcome(None, REASON_GO if full is not None and full.locks is not None and full.locks.go
                           else reason)

        if seen.link.interpreter is None:  # statically linked, or glibc's loader run as a command
            full = self._with_locks(seen)
            if full is not None and full.locks is not None and full.locks.defines_locks:
                return found(full, static=True)
            started = self._loaded_by_hand(argv, seen, env, cwd) if image == program else None
            if started is None:
                return without_library(seen, REASON_STATIC)
            loader = seen  # the program it loads binds to libraries as if this were its interpreter
            seen, env = started
        else:
            loader_path = os.path.join(cwd, seen.link.interpreter)
            found_loader = self._inspect(loader_path, locks=True)
            if found_loader is None:
                raise CommandError(f"{name}: its program interpreter {seen.link.interpreter} is missing "
                                   "or not an ELF file", errno.ENOENT)
            loader = found_loader
            if loader.locks is not None and loader.locks.defines_locks:  # musl: the loader is the C library
                return found(loader, static=False)
        objects = self._load_order(seen, loader, env, cwd)
        loaded[1:] = objects
        ranked = sorted((rank, index, path) for index, path in enumerate(objects)
                        if (rank := library_rank(path)) is not None)
        foreign = False
        for _rank, _index, path in ranked:
            lib = self._inspect(path, locks=True)
            if lib is not None and lib.locks is not None and lib.locks.defines_locks:
                if lib.locks.flavor is not None:
                    return found(lib, static=False)
                foreign = True
        return outcome(None, REASON_FOREIGN) if foreign else without_library(seen, REASON_NONE)

    def _loaded_by_hand(self, argv: Sequence[str], loader: Inspected, env: Mapping[str, str],
                        cwd: str) -> Optional[Tuple[Inspected, Mapping[str, str]]]:
        """The program that glibc's loader, run as a command (``ld.so [OPTIONS]
        PROGRAM ...``), loads as if it were the program's interpreter, and the
        environment its search sees (``--library-path`` stands in for
        LD_LIBRARY_PATH); None if the command is no such thing."""
        if not _GLIBC_LOADER_NAME.fullmatch(loader.link.dynamic.soname or ""):
            return None
        args, search_env = list(argv[1:]), dict(env)
        while args and args[0].startswith("--"):
            option = args.pop(0)
            if option in _LOADER_OPTIONS_WITH_VALUE and args:
                value = args.pop(0)
                if option == "--library-path":
                    search_env["LD_LIBRARY_PATH"] = value
            elif option != "--inhibit-cache":
                return None  # --list, --verify, --help and the like run no program
        # ld.so takes the program as a file name (it would search a bare name as a library: not modelled)
        program = self._inspect(os.path.join(cwd, args[0])) if args else None
        if program is None or program.link.interpreter is None:
            return None
        return program, search_env

    def _image(self, name: str, program: str, env: Mapping[str, str], cwd: str) -> str:
        """The ELF file that will run: the program, or the interpreter its #! line
        names (following nested scripts and ``#!/usr/bin/env NAME``)."""
        path = program
        for _ in range(MAX_INTERPRETERS + 1):
            try:
                with open(path, "rb") as handle:
                    head = handle.read(SHEBANG_MAX)
            except OSError as exc:
                raise CommandError(f"{name}: cannot read {path} ({exc.strerror})", exc.errno) from exc
            if head.startswith(b"\x7fELF"):
                return path
            if not head.startswith(b"#!"):
                raise CommandError(f"{name}: exec format error (neither an ELF file nor a #! script)", errno.ENOEXEC)
            interpreter, argument = parse_shebang(head)
            if not interpreter:
                raise CommandError(f"{name}: exec format error (an empty #! line)", errno.ENOEXEC)
            path = os.path.join(cwd, interpreter)
            problem = exec_problem(path)
            if problem is not None:
                raise CommandError(f"{name}: bad #! interpreter {interpreter}: {problem[1]}", problem[0])
            target = env_program(argument) if os.path.basename(interpreter) == "env" and argument else None
            if target is not None:
                found, problem = search_program(target, env.get("PATH", os.defpath), cwd)
                if found is None:
                    raise CommandError(f"{name}: bad #! interpreter {interpreter} {target}: {problem[1]}",
                                       problem[0])
                path = found
        raise CommandError(f"{name}: too many levels of #! interpreters", errno.ELOOP)

    def _load_order(self, program: Inspected, loader: Inspected, env: Mapping[str, str], cwd: str) -> List[str]:
        """Paths of the objects glibc's ld.so loads for a program, breadth first
        from its DT_NEEDED entries (the order in which symbols bind).

        Each name is searched like ld.so's _dl_map_object for the object that
        needs it: the DT_RPATH of that object and of the objects that loaded it
        up to the executable (unless it has a DT_RUNPATH), LD_LIBRARY_PATH, its
        DT_RUNPATH, /etc/ld.so.cache, the default directories (the last two
        unless DF_1_NODEFLIB). Not modelled: LD_PRELOAD, glibc-hwcaps and legacy
        hwcap subdirectories, $LIB, secure-execution restrictions, dlopen.
        """
        abi = ABIS.get((program.link.machine, program.link.is64))
        platform = abi.platform if abi else os.uname().machine
        exe = _Linked(program, os.path.dirname(os.path.realpath(program.path)), None)
        library_path = [expand_dst(d, exe.origin, platform)
                        for d in split_search_path(env.get("LD_LIBRARY_PATH", ""), ":;")]
        # the loader is in place before anything else, under its path and soname
        known: Dict[str, _Linked] = {}
        rtld = _Linked(loader, os.path.dirname(loader.path), None)
        for label in (loader.path, loader.link.dynamic.soname):
            if label:
                known[label] = rtld
        loaded = {program.file, loader.file}
        order: List[str] = []
        queue = [exe]
        while queue:
            needer = queue.pop(0)
            for needed in needer.dynamic.needed:
                if needed in known:
                    continue
                seen = self._locate(needed, needer, library_path, abi, platform, program.link, cwd)
                if seen is None:
                    continue  # ld.so would refuse to start the program; nothing of it will run
                obj = _Linked(seen, os.path.dirname(seen.path), needer)
                for label in (needed, seen.link.dynamic.soname):
                    if label:
                        known.setdefault(label, obj)
                if seen.file in loaded:  # the same file under another name is loaded once
                    continue
                loaded.add(seen.file)
                order.append(seen.path)
                queue.append(obj)
        return order

    def _locate(self, name: str, needer: _Linked, library_path: Sequence[str], abi: Optional[Abi],
                platform: str, program: LinkFacts, cwd: str) -> Optional[Inspected]:
        """Where ld.so finds one DT_NEEDED name of ``needer``; candidates built for
        another architecture or ELF class are skipped, as ld.so does."""
        if "/" in name:
            candidates = [os.path.join(cwd, expand_dst(name, needer.origin, platform))]
        else:
            directories: List[str] = []
            if not needer.dynamic.runpath:
                chain: Optional[_Linked] = needer
                while chain is not None:
                    rpath = chain.rpath()
                    if rpath is not None:
                        directories += [expand_dst(d, chain.origin, platform) for d in split_search_path(rpath)]
                    chain = chain.loader
            directories += library_path
            if needer.dynamic.runpath:
                directories += [expand_dst(d, needer.origin, platform)
                                for d in split_search_path(needer.dynamic.runpath)]
            candidates = [os.path.join(cwd, d, name) for d in directories]
            if not needer.dynamic.nodeflib and abi is not None:
                candidates += [e.path for e in self._cache_entries() if e.name == name
                               and e.flags == abi.cache_flags and e.hwcap == 0][:1]
                candidates += [os.path.join(d, name) for d in abi.directories]
        for path in candidates:
            seen = self._inspect(os.path.normpath(path))
            if seen is not None and (seen.link.machine, seen.link.is64) == (program.machine, program.is64):
                return seen
        return None

    def _cache_entries(self) -> List[CacheEntry]:
        if self._ld_cache is None:
            try:
                with open(LD_SO_CACHE, "rb") as handle:
                    self._ld_cache = parse_ld_so_cache(handle.read())
            except (OSError, struct.error):
                self._ld_cache = []
        return self._ld_cache


def _real_identity(pid: int, path: str, seen: Inspected) -> Tuple[FileId, str, bool]:
    """(identity, path to open, probe per process only) of a file a process maps.
    On an overlay (a container) that is the layer's copy, which uprobes are
    placed on: /proc/PID/maps gives each container's mount its own device."""
    try:
        opened = os.stat(seen.path)
    except OSError:
        return seen.file, seen.path, False
    on_overlay, real = real_file(pid, path, opened)
    if not on_overlay:
        return seen.file, seen.path, False
    if real is not None:
        try:
            return FileId.of(os.stat(real)), real, False
        except OSError:
            pass
    return seen.file, seen.path, True


def _still_zombie(pid: int) -> bool:
    try:
        return _process_state(pid) in ("Z", "X")
    except (OSError, IndexError):
        return True
