"""Threads of this host that the gadget's snapshot found in a futex wait, made
BlockedThread records while they wait.

The kernel tells which word each thread waits on; this host's /proc tells the
rest: the thread's user stack (scanned from its stack pointer, as
stackscan.py does), which names what it waits in (a mutex, an rwlock, a
condition variable, a semaphore...), and the owner its C library recorded in
the lock (glibc's ``__owner``, an rwlock's ``__cur_writer``, musl's
owner-keeping types). A lock that keeps no owner is said to have none:
nothing is guessed.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, MutableMapping, Optional, Sequence, Set, Tuple

from igdeadlock.gadget import Acquire, LockKind, LockMode, SnapshotCall
from igdeadlock.host.bpf import Bpf, BpfError
from igdeadlock.host.procfs import code_locations, learn_code_locations
from igdeadlock.host.stackscan import executable_ranges, scan_stack
from igdeadlock.host.symbolize import Symbolizer
from igdeadlock.records import BlockedThread, Frame, MappedFile, StackTrace, WaitingThread

# Where the C libraries keep a lock's owner and type (x86-64 and aarch64), as bpf/owners.h has them.
GLIBC_MUTEX_OWNER_OFFSET = 8  # struct __pthread_mutex_s.__owner
GLIBC_MUTEX_KIND_OFFSET = 16  # .__kind
# glibc's rwlock: readers wait on __wrphase_futex, a writer on __writers_futex while another
# writer holds the lock (or on __wrphase_futex while readers do); __cur_writer names the writer
GLIBC_RWLOCK_WRPHASE_OFFSET = 8
GLIBC_RWLOCK_WRITERS_FUTEX_OFFSET = 12
GLIBC_RWLOCK_WRITER_OFFSET = 24
MUSL_MUTEX_LOCK_OFFSET = 4  # _m_lock, the futex word, after _m_type
MUSL_MUTEX_TYPE_BITS = 15  # a normal musl mutex (type 0) keeps no owner
OWNER_TID_MASK = 0x3FFFFFFF  # an owner word without its waiters and owner-died bits
USER_ADDRESS_LIMIT = 1 << 56  # above every user-space address of x86-64 and arm64
GLIBC_MUTEX_PI = 0x20  # PTHREAD_MUTEX_PRIO_INHERIT_NP: __lock holds the owner
GLIBC_MUTEX_ROBUST = 0x10  # PTHREAD_MUTEX_ROBUST_NORMAL_NP: likewise
FUTEX_WAITV_ENTRY = struct.Struct("<QQII")  # struct futex_waitv: val, uaddr, flags, reserved
# glibc's answer to a PI mutex the kernel finds it would deadlock on (EDEADLK):
# the thread waits forever on a futex word of its own stack. The mutex is
# still named in that frame: a word of it points to a PI mutex another thread owns.
OWN_STACK_SPAN = 64 * 1024  # a futex word this close above the stack pointer is on the thread's stack
PI_FRAME_BYTES = 512  # of stack above the pointer searched for the mutex

# What a waiting thread waits in, told by the functions of its innermost frames
# (their names without glibc's internal prefixes and symbol versions, see
# plain_name): (pattern, what it is). The first frame that matches one decides.
FRAMES_LOOKED_AT = 6
SNAPSHOT_SCAN_BYTES = 8 * 1024  # of stack scanned for them
WAIT_FUNCTIONS: Tuple[Tuple["re.Pattern[str]", str], ...] = tuple((re.compile(p), what) for p, what in (
    (r"pthread_mutex_\w*lock\w*|lll_lock_wait\w*|lll_robust\w*lock\w*|mtx_(timed)?lock", "mutex"),
    (r"pthread_rwlock_\w*rdlock\w*", "rdlock"),
    (r"pthread_rwlock_\w*wrlock\w*", "wrlock"),
    (r"g_mutex_lock\w*|g_rec_mutex_lock\w*", "gmutex"),
    (r"sem_(timed|clock)?wait\w*|new_sem_wait\w*", "semaphore"),
    (r"pthread_cond_\w*wait\w*|cnd_(timed)?wait", "condition"),
    (r"pthread_(timed|clock|try)?join\w*|pthread_clockjoin_ex|thrd_join", "join"),
    (r"pthread_barrier_wait\w*", "barrier"),
))
_INTERNAL_PREFIX = re.compile(r"^(__GI_|__libc_)?_*")


def plain_name(function: str) -> str:
    """A function's name as the C library exports it: "__GI___pthread_mutex_lock",
    "pthread_mutex_lock@@GLIBC_2.2.5" and a compiler's "....constprop.0" copy are
    pthread_mutex_lock."""
    return _INTERNAL_PREFIX.sub("", function.split("@", 1)[0].split(".", 1)[0])


@dataclass(frozen=True)
class LockWait:
    """What a waiting thread waits for, as this host can tell."""

    kind: int  # LockKind
    lock: int  # the lock object (the futex word for LockKind.FUTEX)
    mode: int  # LockMode
    owner_ns_tid: int  # its owner as the process numbers threads, 0 if none is recorded


@dataclass
class _Process:
    """One process's memory and mappings, read once per snapshot."""

    pid: int
    musl: bool
    mem: Optional[int] = None  # fd of /proc/PID/mem
    ns_tids: Optional[Dict[int, int]] = None  # thread id in its pid namespace -> on this host
    opened: bool = False

    def word(self, address: int) -> Optional[int]:
        """The 32-bit word at ``address`` in the process, None if unreadable."""
        if not self.opened:
            self.opened = True
            try:
                self.mem = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
            except OSError:
                self.mem = None
        if self.mem is None or not 0 < address < USER_ADDRESS_LIMIT:
            return None
        try:
            data = os.pread(self.mem, 4, address)
        except OSError:
            return None
        return struct.unpack("<I", data)[0] if len(data) == 4 else None

    def words(self, address: int, size: int) -> Optional[bytes]:
        if self.word(address) is None or self.mem is None:
            return None
        try:
            return os.pread(self.mem, size, address)
        except OSError:
            return None

    def host_tid(self, ns_tid: int) -> int:
        """The thread of this process that its pid namespace numbers ``ns_tid``; 0 if none."""
        if self.ns_tids is None:
            self.ns_tids = thread_ids_by_namespace(self.pid)
        return self.ns_tids.get(ns_tid, 0)

    def close(self) -> None:
        if self.mem is not None:
            os.close(self.mem)
            self.mem = None


def thread_ids_by_namespace(pid: int) -> Dict[int, int]:
    """A process's threads: id in the process's innermost pid namespace -> id on this host."""
    found: Dict[int, int] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for name in tasks:
        try:
            with open(f"/proc/{pid}/task/{name}/status") as handle:
                for line in handle:
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        found[int(ids[-1])] = int(ids[0])
                        break
        except (OSError, ValueError, IndexError):
            continue
    return found


# GLib's own futex waits go through syscall() from functions it does not export
# (a stripped libglib names none): its GMutex sleeps on the mutex's word while
# the word is 2 (contended); its condition variables on a counter.
_GLIB = re.compile(r"libglib-2\.0\.so")
GMUTEX_CONTENDED = 2
FUTEX_WAIT_PRIVATE_CMD = 0  # FUTEX_WAIT, without the private flag (op & 0x7f)


def wait_function(frames: Sequence[Frame], waiting: Optional[WaitingThread] = None) -> Optional[str]:
    """What the innermost named frames wait in ("mutex", "rdlock", "condition"...), or None."""
    for frame in frames[:FRAMES_LOOKED_AT]:
        if not frame.function:
            continue
        for pattern, what in WAIT_FUNCTIONS:
            if pattern.fullmatch(plain_name(frame.function)):
                return what
    if waiting is not None and len(frames) > 1 and frames[0].function == "syscall" and frames[1].file and \
            _GLIB.search(frames[1].file) and not frames[1].function and waiting.op & 0x7F == \
            FUTEX_WAIT_PRIVATE_CMD and waiting.value == GMUTEX_CONTENDED:
        return "gmutex"
    return None


def glibc_rwlock_wait(process: _Process, word: int, writer: bool, is_thread: Callable[[int], bool]
                      ) -> Tuple[int, int]:
    """(the rwlock, its writer as the process numbers it) of a wait on futex
    word ``word``: a writer waiting for another writer waits on
    __writers_futex, anything else on __wrphase_futex."""
    if writer:
        base = word - GLIBC_RWLOCK_WRITERS_FUTEX_OFFSET
        owner = process.word(base + GLIBC_RWLOCK_WRITER_OFFSET) or 0
        if owner and is_thread(owner):
            return base, owner
    base = word - GLIBC_RWLOCK_WRPHASE_OFFSET
    owner = process.word(base + GLIBC_RWLOCK_WRITER_OFFSET) or 0
    return base, owner if owner and is_thread(owner) else 0


def pi_deadlock_wait(waiting: WaitingThread, process: _Process, is_thread: Callable[[int], bool]) -> LockWait:
    """A thread that glibc keeps waiting forever because the kernel found that
    locking the PI mutex it asked for would deadlock: that mutex, found in its
    registers or stack frame (a PI mutex another thread of the process owns),
    and its owner."""
    frame = process.words(waiting.user_sp, PI_FRAME_BYTES) or b""
    stacked = [word for (word,) in struct.iter_unpack("<Q", frame[:len(frame) - len(frame) % 8])]
    # glibc keeps the mutex, or its __kind field, in a register
    registers = [r - offset for r in waiting.user_saved for offset in (0, GLIBC_MUTEX_KIND_OFFSET)]
    for pointer in (*registers, *stacked):
        if pointer < 4096 or pointer & 3:
            continue
        kind = process.word(pointer + GLIBC_MUTEX_KIND_OFFSET)
        if kind is None or not kind & GLIBC_MUTEX_PI:
            continue
        owner = (process.word(pointer) or 0) & OWNER_TID_MASK
        if owner != waiting.ns_tid and is_thread(owner):
            return LockWait(LockKind.MUTEX, pointer, LockMode.EXCLUSIVE, owner)
    return LockWait(LockKind.FUTEX, waiting.futex, LockMode.EXCLUSIVE, 0)


def lock_wait(waiting: WaitingThread, what: Optional[str], process: _Process,
              is_thread: Callable[[int], bool]) -> LockWait:
    """What ``waiting`` waits for, with the owner its C library recorded."""
    word = waiting.futex
    if what == "mutex" and not process.musl and 0 <= word - waiting.user_sp < OWN_STACK_SPAN:
        return pi_deadlock_wait(waiting, process, is_thread)
    if what == "mutex":
        if process.musl:
            lock = word - MUSL_MUTEX_LOCK_OFFSET
            kind_word = process.word(lock) or 0
            owner = (process.word(word) or 0) & OWNER_TID_MASK if kind_word & MUSL_MUTEX_TYPE_BITS else 0
        else:
            lock = word
            owner = (process.word(lock + GLIBC_MUTEX_OWNER_OFFSET) or 0) & OWNER_TID_MASK
            if not owner and (process.word(lock + GLIBC_MUTEX_KIND_OFFSET) or 0) & (GLIBC_MUTEX_PI |
                                                                                     GLIBC_MUTEX_ROBUST):
                owner = (process.word(lock) or 0) & OWNER_TID_MASK
        return LockWait(LockKind.MUTEX, lock, LockMode.EXCLUSIVE, owner if is_thread(owner) else 0)
    if what in ("rdlock", "wrlock"):
        mode = LockMode.SHARED if what == "rdlock" else LockMode.EXCLUSIVE
        if process.musl:  # musl's rwlock is its word, and records no writer
            return LockWait(LockKind.RWLOCK, word, mode, 0)
        lock, owner = glibc_rwlock_wait(process, word, what == "wrlock", is_thread)
        return LockWait(LockKind.RWLOCK, lock, mode, owner)
    if what == "gmutex":
        return LockWait(LockKind.GMUTEX, word, LockMode.EXCLUSIVE, 0)
    if what == "semaphore":
        return LockWait(LockKind.SEMAPHORE, word, LockMode.EXCLUSIVE, 0)
    return LockWait(LockKind.FUTEX, word, LockMode.EXCLUSIVE, 0)


@dataclass
class SnapshotReader:
    """Completes snapshot records of this host's threads from /proc.

    ``library_of(pid, process_start)``: the process's C library (its flavor,
    "musl" or "glibc", and its path as the process sees it), None for a process
    with no C library lock functions (a Go program). A thread whose wait is not
    made in that file (a Go runtime's futex) waits in no lock this reads: its
    stack is left for a finding to read (a big program's symbols take seconds).
    ``excluded``: processes that are igdeadlock's own (the companion, its
    daemon), never reported. ``files`` and ``locations``
    (a Collector's ``files`` and ``resolved``) learn where the frames it reads
    point, so that they are named after the process is gone. Each wait is
    read once: a thread that has not run since (same ``switches``) waits the
    same way.
    """

    library_of: Callable[[int, int], Optional[Tuple[str, str]]]
    files: MutableMapping[int, MappedFile]
    locations: MutableMapping[Tuple[int, int], Tuple[int, int]]
    excluded: Set[int] = field(default_factory=set)
    _done: Dict[Tuple[int, int], Tuple[BlockedThread, Tuple[int, ...]]] = field(default_factory=dict)
    _symbolizer: Symbolizer = field(init=False)  # names only, each file's symbols read once

    def __post_init__(self) -> None:
        self._symbolizer = Symbolizer(self.files, use_addr2line=False)

    def complete(self, threads: Iterable[WaitingThread]) -> List[BlockedThread]:
        """The snapshot's threads as blocked-thread records, igdeadlock's own left out."""
        waiting = [w for w in threads if w.pid not in self.excluded]
        processes: Dict[int, _Process] = {}
        blocked: List[BlockedThread] = []
        done: Dict[Tuple[int, int], Tuple[BlockedThread, Tuple[int, ...]]] = {}
        try:
            by_process: Dict[int, List[WaitingThread]] = {}
            for w in waiting:
                by_process.setdefault(w.pid, []).append(w)
            for pid, threads_of in sorted(by_process.items()):
                library = self.library_of(pid, threads_of[0].process_start)
                flavor, path = library if library is not None else (None, None)
                pcs = code_locations(pid, [w.user_pc for w in threads_of]) if library is not None else {}
                in_library = [pcs.get(w.user_pc, ("",))[0] == path for w in threads_of]
                blocked += [kernel_known_wait(w) for w, inside in zip(threads_of, in_library) if not inside]
                threads_of = [w for w, inside in zip(threads_of, in_library) if inside]
                ns_tids = {w.ns_tid for w in threads_of}
                fresh = [w for w in threads_of if (w.tid, w.switches) not in self._done]
                frames = self._stacks(pid, fresh)
                names = self._names(pid, frames)
                for w in threads_of:
                    key = (w.tid, w.switches)
                    if key in self._done:
                        record, stack = self._done[key]
                        record = record._replace(observed=w.observed, process_threads=w.process_threads)
                    else:
                        process = processes.get(pid)
                        if process is None:
                            process = processes[pid] = _Process(pid, flavor == "musl")
                        stack = frames.get(w.tid, (w.user_pc,) if w.user_pc else ())
                        try:
                            record = self._record(w, wait_function(names.get(w.tid, []), w), process, ns_tids)
                        except (OSError, ValueError, OverflowError, struct.error):
                            record = kernel_known_wait(w)  # its memory did not read as expected
                    done[key] = (record, stack)
                    blocked.append(record._replace(wait_frames=stack))
        finally:
            for process in processes.values():
                process.close()
        self._done = done  # waits no thread is in any more are forgotten
        return blocked

    def _record(self, w: WaitingThread, what: Optional[str], process: _Process, ns_tids: Set[int]
                ) -> BlockedThread:
        def is_thread(ns_tid: int) -> bool:
            return bool(ns_tid) and (ns_tid in ns_tids or process.host_tid(ns_tid) != 0)

        if w.call == SnapshotCall.FUTEX_WAITV:
            # the first of its waits names a word (a lock is never waited for so)
            entry = process.words(w.futex, FUTEX_WAITV_ENTRY.size)
            w = w._replace(futex=FUTEX_WAITV_ENTRY.unpack(entry)[1] if entry else w.futex)
        wait = lock_wait(w, what, process, is_thread)
        owner = w.owner_tid  # the kernel's, for a PI futex: a thread of this host already
        if not owner and wait.owner_ns_tid:
            owner = wait.owner_ns_tid if w.ns_tid == w.tid else process.host_tid(wait.owner_ns_tid)
        return BlockedThread(
            pid=w.pid, tid=w.tid, comm=w.comm, mntns_id=w.mntns_id, process_start=w.process_start,
            session_id=0, lock=wait.lock, gen=0, mode=wait.mode, kind=wait.kind,
            how=Acquire.TIMED if w.timed else Acquire.BLOCKING, site=0, since=w.since, observed=w.observed,
            owner_tid=owner if wait.kind != LockKind.FUTEX else 0, held=(),
            process_threads=w.process_threads, wait_frames=(), switches=w.switches)

    def _stacks(self, pid: int, threads: Sequence[WaitingThread]) -> Dict[int, Tuple[int, ...]]:
        """Each thread's innermost frames, from its stack pointer: enough to tell
        what it waits in (a finding reads the whole stack of its threads)."""
        stacks = {}
        code = executable_ranges(pid) if threads else []
        for w in threads:
            scanned = scan_stack(pid, w.tid, FRAMES_LOOKED_AT, SNAPSHOT_SCAN_BYTES, code)
            stacks[w.tid] = tuple(scanned) if scanned else ((w.user_pc,) if w.user_pc else ())
        return stacks

    def _names(self, pid: int, stacks: Dict[int, Tuple[int, ...]]) -> Dict[int, List[Frame]]:
        """The innermost frames of each stack, named (no source lines: the names tell
        what a thread waits in)."""
        learn_code_locations(pid, {a for stack in stacks.values() for a in stack}, self.files, self.locations)
        symbolizer = self._symbolizer
        names = {}
        for tid, stack in stacks.items():
            top = stack[:FRAMES_LOOKED_AT]
            frames = tuple(self.locations.get((pid, a), (0, a)) for a in top)
            names[tid] = symbolizer.resolve(StackTrace(0, pid, frames, top))
        return names


class LocalSnapshots:
    """Blocked-thread snapshots of this host, taken by running the gadget's
    task iterator from here: this client runs in the host's pid namespace,
    which a daemon in a namespace of its own (as ig daemon must be where PID
    1's namespaces are hidden) does not see beyond. ``pids``: only these
    processes (one iteration each); none: every task."""

    def __init__(self, program_id: int, reader: SnapshotReader, decode: Callable[[bytes], List[WaitingThread]],
                 pids: Sequence[int] = ()) -> None:
        self.bpf = Bpf()
        self.reader = reader
        self.decode = decode
        self.pids = tuple(pids)
        self.gone: List[int] = []  # processes asked for that ended before their iterator was made
        self.program_fd = self.bpf.program_fd(program_id)
        self.links: List[int] = []
        for pid in self.pids:
            try:
                self.links.append(self.bpf.iterator_link(self.program_fd, pid))
            except BpfError as exc:
                if exc.errno != errno.EINVAL:
                    self.gone.append(pid)
                    continue
                # before Linux 6.1 a task iterator takes no process: every task, filtered here
                self._close_links()
                self.links = [self.bpf.iterator_link(self.program_fd, 0)]
                break
        if not self.pids:
            self.links = [self.bpf.iterator_link(self.program_fd, 0)]
        self.taken = 0
        self.seconds = 0.0  # spent taking them, reading /proc included

    def take(self) -> Tuple[List[BlockedThread], int]:
        """One snapshot: (its waiting threads as records, how many processes they are in)."""
        started = time.monotonic()
        raw = b"".join(self.bpf.read_iterator(link) for link in self.links)
        waiting = self.decode(raw)
        if self.pids:
            wanted = set(self.pids)
            waiting = [w for w in waiting if w.pid in wanted]
        blocked = self.reader.complete(waiting)
        self.taken += 1
        self.seconds += time.monotonic() - started
        return blocked, len({w.pid for w in waiting})

    def _close_links(self) -> None:
        for fd in self.links:
            os.close(fd)
        self.links = []

    def close(self) -> None:
        self._close_links()
        if self.program_fd >= 0:
            os.close(self.program_fd)
            self.program_fd = -1


def kernel_known_wait(w: WaitingThread) -> BlockedThread:
    """A snapshot's thread as the kernel alone tells it (a remote target's, whose
    memory this client cannot read): a PI futex is a mutex whose owner the
    kernel knows; any other wait is on a futex word, for nothing known."""
    pi = w.owner_tid != 0
    return BlockedThread(
        pid=w.pid, tid=w.tid, comm=w.comm, mntns_id=w.mntns_id, process_start=w.process_start, session_id=0,
        lock=w.futex, gen=0, mode=LockMode.EXCLUSIVE, kind=LockKind.MUTEX if pi else LockKind.FUTEX,
        how=Acquire.TIMED if w.timed else Acquire.BLOCKING, site=0, since=w.since, observed=w.observed,
        owner_tid=w.owner_tid, held=(), process_threads=w.process_threads,
        wait_frames=(w.user_pc,) if w.user_pc else (), switches=w.switches)
