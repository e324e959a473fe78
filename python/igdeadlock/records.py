"""The records the gadget's datasources decode into, and the symbolized frames
of their stacks: plain values that flow from the wire layer to the analysis
and the reports. Named tuples: cheap to build by the million.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union


class HeldLock(NamedTuple):
    """A lock held by a thread. Records carry plain (lock, gen, mode) triples,
    which compare equal to these."""

    lock: int
    gen: int
    mode: int


class LockEdge(NamedTuple):
    """Thread ``tid`` requested ``to_lock`` while holding ``from_lock`` (and ``held``)."""

    pid: int
    tid: int
    comm: str
    mntns_id: int
    process_start: int
    session_id: int
    from_lock: int
    from_gen: int
    from_mode: int
    from_kind: int
    from_site: int
    to_lock: int
    to_gen: int
    to_mode: int
    to_kind: int
    to_how: int
    to_site: int
    held: Tuple[Tuple[int, int, int], ...]  # (lock, gen, mode) triples, as HeldLock


class LockEdgeBatch(NamedTuple):
    """The edges of one fetch, decoded only as far as ingest needs.

    ``keys[i]`` is (pid, process_start, session_id, from_lock, from_gen, to_lock,
    to_gen) of record i and ``raws[i]`` its element as sent; ``decode(raws[i])``
    makes the whole LockEdge. Most edges are new and never take part in a cycle,
    so most records are never decoded further (the decoder sends these only when
    asked to, with ``StreamDecoder(lazy_edges=True)``)."""

    keys: List[Tuple[int, ...]]
    raws: List[bytes]
    decode: Callable[[bytes], LockEdge]

    def records(self) -> List[LockEdge]:
        return [self.decode(raw) for raw in self.raws]


EDGE_KEY_FIELDS = ("pid", "process_start", "session_id", "from_lock", "from_gen", "to_lock", "to_gen")


class ProcessExit(NamedTuple):
    pid: int
    process_start: int
    mntns_id: int
    comm: str
    exited: int = 0  # boot time (ns) of the exit, 0 if unknown


class StackTrace(NamedTuple):
    """An acquisition site: frames as (file_id, offset); file_id 0 = raw address."""

    site: int
    pid: int
    frames: Tuple[Tuple[int, int], ...]
    addresses: Tuple[int, ...] = ()  # each frame's address in the process
    # a CPython process's Python frames, innermost first: (code object address, instruction)
    python: Tuple[Tuple[int, int], ...] = ()


class PythonCode(NamedTuple):
    """What names a CPython code object of a process (read by the gadget while
    it ran): its file, its function, and where its lines start."""

    pid: int
    code: int  # its address in the process
    first_line: int
    filename: str  # "" when not ASCII
    qualname: str
    linetable: bytes  # the start of co_linetable (as much as the gadget copies)

    def line(self, instruction: int) -> int:
        """The source line of an instruction (2-byte code units from the first),
        from CPython 3.11's location table (Objects/locations.md); the last line
        the copied table reaches beyond its end."""
        return python_line(self.linetable, self.first_line, instruction)


def _varint(table: bytes, i: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while i < len(table):
        byte = table[i]
        i += 1
        value |= (byte & 63) << shift
        shift += 6
        if not byte & 64:
            break
    return value, i


def python_line(table: bytes, first_line: int, instruction: int) -> int:
    line, at, i = first_line, 0, 0
    while i < len(table):
        head = table[i]
        i += 1
        code, length = (head >> 3) & 15, (head & 7) + 1
        if code == 14 or code == 13:  # long form, or no columns: a signed line delta first
            delta, i = _varint(table, i)
            line += -(delta >> 1) if delta & 1 else delta >> 1
            if code == 14:  # then end line delta, column, end column
                for _ in range(3):
                    _, i = _varint(table, i)
        elif code in (10, 11, 12):  # one line, delta code - 10; two column bytes
            line += code - 10
            i += 2
        elif code != 15:  # short forms: the same line, one column byte (15: no location)
            i += 1
        if at <= instruction < at + length:
            return line
        at += length
    return line


class UntracedWait(NamedTuple):
    """Threads of a process waited ``waits`` times (since the last fetch) in a
    futex wait outside every traced lock function, at the wait whose stack is
    ``site``: a condition variable or a join, or a lock igdeadlock cannot see."""

    pid: int
    comm: str
    mntns_id: int
    process_start: int
    site: int
    waits: int
    caller: int = 0  # the word at the user stack pointer: a leaf function's return address
    caller_file: int = 0  # file_id of the file it points into (0 if none)
    caller_offset: int = 0


class MappedFile(NamedTuple):
    file_id: int
    inode: int
    device: int
    path: str


class Counter(NamedTuple):
    """How often the gadget could not track something in a process, since the last fetch."""

    name: str
    pid: int
    times: int  # since the previous fetch


class BlockedThread(NamedTuple):
    """Thread ``tid`` is blocked in a futex wait for ``lock`` (seen at a fetch),
    or, kind LockKind.FUTEX, in an endless futex wait outside the lock functions."""

    pid: int
    tid: int
    comm: str
    mntns_id: int
    process_start: int
    session_id: int
    lock: int
    gen: int
    mode: int
    kind: int
    how: int
    site: int
    since: int  # boot time (ns) the wait started
    observed: int  # boot time (ns) of the wait that made the record
    owner_tid: int  # glibc's owner of the lock, 0 if unknown
    held: Tuple[Tuple[int, int, int], ...]  # (lock, gen, mode) triples, as HeldLock
    process_threads: int = 0  # threads its process had when the wait began
    # kind LockKind.FUTEX (a wait outside the lock functions: lock is the futex
    # word), or any wait a snapshot found: the return addresses of its user
    # stack, innermost first
    wait_frames: Tuple[int, ...] = ()
    # from a snapshot: the thread's context switches so far, the same in two
    # snapshots while it waits all along; 0 from the trace
    switches: int = 0


class BlockedSnapshot(NamedTuple):
    """Every thread a blocked-thread snapshot found waiting (host/snapshot.py
    made them BlockedThread records): the waits of the threads it does not list
    have ended. ``processes``: how many processes it looked at."""

    threads: Tuple[BlockedThread, ...]
    processes: int = 0


class WaitingThread(NamedTuple):
    """A thread the blocked-thread snapshot found in a futex wait, as the kernel
    alone tells it (nothing traced before): the lock word, how long it has not
    run, its user registers and kernel stack. User space that can read the
    process makes a BlockedThread of it (host/snapshot.py)."""

    pid: int
    tid: int
    comm: str
    mntns_id: int
    process_start: int
    ns_tid: int  # the thread's id in its own pid namespace (C libraries record owners by it)
    futex: int  # the futex word (futex_waitv: the address of its array of waits)
    op: int  # the futex command with its flags
    value: int  # the word's value the wait expects
    owner_tid: int  # a PI futex's owner as the kernel knows it, 0 if none known
    call: int  # gadget.SnapshotCall
    timed: int  # the wait has a deadline
    last_ran: int  # scheduler clock (ns) the thread last started to run (its wait began about then)
    switches: int  # its context switches so far: unchanged while it waits
    since: int  # boot time (ns) it has waited since, about; 0 if unknown
    observed: int  # boot time (ns) of the snapshot
    process_threads: int
    user_pc: int
    user_sp: int
    user_fp: int
    user_saved: Tuple[int, ...]  # its callee-saved registers (a lock function keeps its lock in one)
    kernel_frames: Tuple[int, ...]  # return addresses of its kernel stack, innermost first


class ProcessEvent(NamedTuple):
    """A process started a program (exec), or joined the traced tree (fork):
    the C library it uses may need uprobes of its own."""

    pid: int
    parent_pid: int
    process_start: int
    mntns_id: int
    event: int
    paused: int  # stopped (SIGSTOP) until the client has probed it and continues it
    comm: str
    exe: str  # the file execve was given (exec events)


class MisuseEvent(NamedTuple):
    """A thread misused a lock (gadget.Misuse): relocked it, unlocked another
    thread's, or exited holding it."""

    pid: int
    tid: int
    comm: str
    mntns_id: int
    process_start: int
    misuse: int
    lock: int
    gen: int
    kind: int
    mode: int
    held_mode: int
    site: int  # where it happened (0: no stack)
    held_site: int  # where the lock was taken (0: unknown)
    owner_tid: int  # the lock's holder (unlock-not-owner), 0 if unknown


class ThreadResumed(NamedTuple):
    """A thread reported blocked is not waiting any more."""

    pid: int
    tid: int
    lock: int


class ProcessMeta(NamedTuple):
    """Where a process runs, from IG's enrichment (empty strings when unknown).

    Sent with a process's first edge or blocked-thread record, and once more
    when a later record first names its container."""

    pid: int
    process_start: int
    mntns_id: int
    node: str
    namespace: str
    pod: str
    container: str
    runtime_container: str
    container_id: str  # the runtime's id of the container


@dataclass(frozen=True)
class FetchTick:
    """A map-iterator datasource delivered one fetch (possibly empty)."""

    datasource: str
    count: int


@dataclass(frozen=True)
class LogMessage:
    """A log line of the gadget's run; ``level`` as logrus numbers them (0 panic ... 6 trace)."""

    level: int
    text: str


Record = Union[LockEdge, ProcessExit, StackTrace, MappedFile, Counter, BlockedThread, ThreadResumed, ProcessMeta,
               ProcessEvent, MisuseEvent, UntracedWait, PythonCode, WaitingThread, BlockedSnapshot]


@dataclass(frozen=True)
class Frame:
    address: int  # offset in the file (or the raw address when no file is known)
    file: Optional[str] = None
    function: Optional[str] = None
    function_offset: int = 0
    source_file: Optional[str] = None  # from DWARF line information
    line: Optional[int] = None

    @property
    def source(self) -> Optional[str]:
        """``file.c:12``, or None when the binary has no line information."""
        if self.source_file is None or self.line is None:
            return None
        return f"{os.path.basename(self.source_file)}:{self.line}"

    def describe(self) -> str:
        where = self.function + (f"+0x{self.function_offset:x}" if self.function_offset else "") \
            if self.function else f"0x{self.address:x}"
        text = where
        if self.file:
            text += f" ({self.file}+0x{self.address:x})" if not self.function else f" ({os.path.basename(self.file)})"
        if self.source:
            text += f" {self.source}"
        return text

    def to_json(self) -> Dict[str, object]:
        return {
            "address": f"0x{self.address:x}",
            "file": self.file,
            "function": self.function,
            "offset": self.function_offset if self.function else None,
            "source": self.source,
            "source_file": self.source_file,
            "line": self.line,
        }
