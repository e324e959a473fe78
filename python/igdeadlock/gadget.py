"""The gadget's contract: the values bpf/contract.h and gadget.yaml define and
the companion reads, written once. tests/unit/test_gadget_contract.py checks
them against program.bpf.c.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Dict, FrozenSet, Optional, Tuple


class LockMode(IntEnum):
    """How a lock is held or requested (enum lock_mode)."""

    EXCLUSIVE = 0  # mutex, spinlock, rwlock write
    SHARED = 1  # rwlock read


class LockKind(IntEnum):
    """What kind of lock object it is (enum lock_kind)."""

    MUTEX = 0
    RWLOCK = 1
    SPINLOCK = 2
    FUTEX = 3  # no lock: a futex wait outside the lock functions (blocked records only)
    # locks of lock functions outside the C library's pthread ones (host/lockfunctions.py);
    # none records its owner
    SEMAPHORE = 4  # a semaphore used as a lock (CPython 3.11, 3.12): no owner at all
    GMUTEX = 5  # GLib's GMutex
    PYMUTEX = 6  # CPython 3.13+'s PyMutex
    ABSL_MUTEX = 7  # Abseil's absl::Mutex
    USER = 16  # declared with --lock-functions


class AcquiredWhen(IntEnum):
    """How a try or timed lock function's result tells that it acquired (enum acquired_when)."""

    ZERO = 0  # returns 0 (pthread, sem_*)
    TRUE = 1  # returns a true bool or gboolean
    ONE = 2  # returns 1 (CPython's PY_LOCK_ACQUIRED)


class Acquire(IntEnum):
    """How an acquisition waits (enum acquire)."""

    BLOCKING = 0  # until acquired
    TRY = 1  # never: no incoming edge
    TIMED = 2  # until a deadline


class Libc(IntEnum):
    """The C library a probe is on: the low byte of its attach cookie (enum libc)."""

    GLIBC = 0
    MUSL = 1


class ProcessChange(IntEnum):
    """What a process event says (enum process_change)."""

    EXEC = 0  # it started a program: it may use another C library now
    FORK = 1  # a new process in the traced command's tree


class SnapshotCall(IntEnum):
    """The system call a thread of the blocked-thread snapshot waits in (enum snapshot_call)."""

    FUTEX = 0  # futex(2): a wait on one word
    FUTEX_RESTART = 1  # a timed futex wait resumed after a signal
    FUTEX_WAITV = 2  # futex_waitv(2): a wait on several words (the record's word is their array)


class Misuse(IntEnum):
    """Misuse of a lock (enum misuse)."""

    RELOCK_HELD = 0  # a thread requests a non-recursive lock it holds
    UNLOCK_NOT_OWNER = 1  # a thread unlocks a lock another one holds
    EXIT_HOLDING = 2  # a thread exits holding a lock
    UNLOCK_NOT_HELD = 3  # a thread unlocks a lock nobody holds


class Stat(IntEnum):
    """Keys of the `counters` map: what the gadget could not track (enum stat)."""

    HELD_OVERFLOW = 0  # a lock not tracked: held set full
    THREADS_FULL = 1  # a thread not tracked: thread map full
    EDGES_FULL = 2  # an edge lost: edge map full
    SITES_FULL = 3  # a stack lost: stack map full
    GENERATIONS_FULL = 4  # a destroy not recorded
    BLOCKED_FULL = 5  # a blocked thread not recorded
    TREE_FULL = 6  # a process of the traced tree not tracked
    REQUEST_LOST = 7  # a lock request not handed over (another thread's came in between)
    RETURN_MISSED = 8  # a try or timed lock's return not seen


LOCK_MODE_NAMES: Dict[int, str] = {LockMode.EXCLUSIVE: "write", LockMode.SHARED: "read"}
LOCK_KIND_NAMES: Dict[int, str] = {LockKind.MUTEX: "mutex", LockKind.RWLOCK: "rwlock",
                                   LockKind.SPINLOCK: "spinlock", LockKind.FUTEX: "futex",
                                   LockKind.SEMAPHORE: "semaphore", LockKind.GMUTEX: "gmutex",
                                   LockKind.PYMUTEX: "pymutex", LockKind.ABSL_MUTEX: "absl-mutex",
                                   LockKind.USER: "user-lock"}
# Kinds whose lock has no owner at all: any thread may release it.
OWNERLESS_KINDS = frozenset({LockKind.SEMAPHORE})
ACQUIRE_NAMES: Dict[int, str] = {Acquire.BLOCKING: "blocking", Acquire.TRY: "try", Acquire.TIMED: "timed"}
LIBC_NAMES: Dict[int, str] = {Libc.GLIBC: "glibc", Libc.MUSL: "musl"}
# how reports and stats name the counters
COUNTER_NAMES: Dict[int, str] = {
    Stat.HELD_OVERFLOW: "held_lock_overflow",
    Stat.THREADS_FULL: "thread_map_full",
    Stat.EDGES_FULL: "edge_map_full",
    Stat.SITES_FULL: "stack_map_full",
    Stat.GENERATIONS_FULL: "generation_map_full",
    Stat.BLOCKED_FULL: "blocked_map_full",
    Stat.TREE_FULL: "tree_map_full",
    Stat.REQUEST_LOST: "lock_request_lost",
    Stat.RETURN_MISSED: "lock_return_missed",
}

# What each counter means for a report: "{count} {meaning}"
COUNTER_MEANINGS: Dict[int, str] = {
    Stat.HELD_OVERFLOW: "lock(s) not tracked: the thread held too many at once",
    Stat.THREADS_FULL: "thread(s) not tracked: the thread map was full",
    Stat.EDGES_FULL: "lock-order edge(s) lost: the edge map was full between two fetches",
    Stat.SITES_FULL: "stack(s) lost: the stack map was full between two fetches",
    Stat.GENERATIONS_FULL: "destroyed lock(s) not recorded: a reused address may be taken for the old lock",
    Stat.BLOCKED_FULL: "blocked thread(s) not recorded: the blocked-thread map was full",
    Stat.TREE_FULL: "process(es) of the traced tree not followed: the tree map was full",
    Stat.REQUEST_LOST: "lock request(s) not tracked: the hand-over between the gadget's programs was interrupted",
    Stat.RETURN_MISSED: "try or timed lock call(s) whose return the kernel did not report: whether they "
                        "acquired is unknown, so no edge from those locks was recorded",
}

# A uprobe's attach cookie: bits 0-7 the C library, bits 32-63 the size of the
# probed function (musl's nested lock calls are told apart with it).
COOKIE_LIBC_MASK = 0xFF
COOKIE_SIZE_SHIFT = 32
COOKIE_SIZE_MAX = 0xFFFF_FFFF


# Programs ig leaves alone (their section is DISABLED_SECTION) that the client
# places where they are needed: program -> (the lock function it goes on, on its
# return or not, the C libraries that need it). glibc records the owner in every
# mutex, so the gadget knows from there when a mutex was released or a try or
# timed lock failed (one probe hit per lock/unlock pair); musl's normal mutexes
# record none. Checking unlocks (an unlock of a lock another thread holds) needs
# the unlock probe everywhere.
MUSL_ONLY = frozenset({"musl"})
UNLOCK_PROGRAM = "trace_uprobe_mutex_unlock"
CLIENT_PLACED_PROGRAMS: Dict[str, Tuple[str, bool, FrozenSet[str]]] = {
    UNLOCK_PROGRAM: ("pthread_mutex_unlock", False, MUSL_ONLY),
    "trace_uretprobe_mutex_trylock": ("pthread_mutex_trylock", True, MUSL_ONLY),
    "trace_uretprobe_mutex_timedlock": ("pthread_mutex_timedlock", True, MUSL_ONLY),
    "trace_uretprobe_mutex_clocklock": ("pthread_mutex_clocklock", True, MUSL_ONLY),
}


# A lock function's probe also carries what the function is (COOKIE_* of
# program.bpf.c): kind, which argument is the lock, mode, how it waits, how its
# result tells success, and LOCK_FLAG_*.
COOKIE_KIND_SHIFT = 8
COOKIE_ARG_SHIFT = 16
COOKIE_MODE_SHIFT = 19
COOKIE_HOW_SHIFT = 20
COOKIE_RESULT_SHIFT = 22
COOKIE_FLAGS_SHIFT = 24
MAX_LOCK_ARGUMENT = 4  # the lock is one of the first five arguments
LOCK_FLAG_RECURSIVE = 0x1  # its holder may take it again
LOCK_FLAG_WAITS_ELSEWHERE = 0x2  # it sleeps on a futex of its own (a per-thread one), not the lock word
LOCK_FLAG_ANY_RELEASER = 0x4  # any thread may release it (a semaphore)
LOCK_FLAG_WAIT_INTENT = 0x8  # a try that stands for a blocking acquisition (CPython tries first, then waits)
# The three programs that serve every such function, by role; ig places them nowhere.
LOCK_FUNCTION_PROGRAM = "trace_uprobe_lock_function"
LOCK_FUNCTION_RETURN_PROGRAM = "trace_uretprobe_lock_function"
UNLOCK_FUNCTION_PROGRAM = "trace_uprobe_unlock_function"
DESTROY_FUNCTION_PROGRAM = "trace_uprobe_destroy_function"


def lock_function_cookie(libc: str, kind: int, argument: int, mode: int, how: int,
                         acquired_when: int = 0, flags: int = 0) -> int:
    """The cookie of a probe on a lock function of a process on C library ``libc``."""
    if not 0 <= argument <= MAX_LOCK_ARGUMENT:
        raise ValueError(f"the lock must be one of the first {MAX_LOCK_ARGUMENT + 1} arguments")
    flavor = {name: value for value, name in LIBC_NAMES.items()}[libc]
    return (flavor | kind << COOKIE_KIND_SHIFT | argument << COOKIE_ARG_SHIFT | mode << COOKIE_MODE_SHIFT
            | how << COOKIE_HOW_SHIFT | acquired_when << COOKIE_RESULT_SHIFT | flags << COOKIE_FLAGS_SHIFT)


def attach_cookie(libc: str, function_size: int) -> int:
    """The cookie of a probe on a function of ``function_size`` bytes in a C library."""
    flavor = {name: value for value, name in LIBC_NAMES.items()}[libc]
    return flavor | min(function_size, COOKIE_SIZE_MAX) << COOKIE_SIZE_SHIFT


# Acquisition site ids: the CPU that numbered the site above a per-CPU count;
# 0 means "no stack". The count has SITE_CPU_SHIFT bits.
SITE_CPU_SHIFT = 48

# Datasources.
EDGES, STACKS, FILES, COUNTERS, BLOCKED = "edges", "stacks", "files", "counters", "blocked"
UNTRACED_WAITS, PYTHON_CODES = "untraced_waits", "python_codes"
# fetched together, every fetch interval
MAP_ITERATORS = (EDGES, STACKS, FILES, COUNTERS, BLOCKED, UNTRACED_WAITS, PYTHON_CODES)
RESUMED, PROCESSES, DEAD_PIDS, MISUSE = "resumed", "processes", "dead_pids", "misuse"  # events, as they happen
# The blocked-thread snapshot: a task iterator IG runs at the start of a run, then as the
# datasource's fetch-interval and fetch-count annotations say (operator.oci.annotate).
WAITING = "waiting"
SNAPSHOT_PROGRAM = "snapshot_waiting_threads"  # its task iterator program

# Parameters (gadget.yaml's params.ebpf, as IG names them).
TREE_PID_PARAM = "operator.oci.ebpf.tree-pid"  # trace only this process and its descendants
PAUSE_NEW_PROCESSES_PARAM = "operator.oci.ebpf.pause-new-processes"  # stop new tree processes until probed
HANGS_ONLY_PARAM = "operator.oci.ebpf.hangs-only"  # no lock tracing: the lock probes and futex tracepoints do nothing
ANNOTATE_PARAM = "operator.oci.annotate"  # datasource annotations set for one run (IG's oci operator)


def snapshot_schedule(interval_ms: int, count: int = 0) -> str:
    """The annotate parameter that makes IG run the snapshot every ``interval_ms``
    milliseconds, ``count`` times (0: until the run stops)."""
    return f"{WAITING}:fetch-interval={interval_ms}ms,{WAITING}:fetch-count={count}"


# --- What the gadget needs of the kernel --------------------------------------
# The BPF helpers the gadget calls that not every kernel it may meet has:
# (helper id, name, first Linux release). The ids are the kernel's enum
# bpf_func_id: a verifier that does not know a helper names only its number.
# Checked against the gadget's source by tests/unit/test_kernel_support.py.

REQUIRED_HELPERS: Tuple[Tuple[int, str, str], ...] = (
    (125, "bpf_ktime_get_boot_ns", "5.8"),
    (127, "bpf_seq_write", "5.7"),  # the blocked-thread snapshot's task iterator
    (131, "bpf_ringbuf_reserve", "5.8"),
    (132, "bpf_ringbuf_submit", "5.8"),
    (133, "bpf_ringbuf_discard", "5.8"),
    (134, "bpf_ringbuf_query", "5.8"),
    (141, "bpf_get_task_stack", "5.9"),
    (158, "bpf_get_current_task_btf", "5.11"),
    (164, "bpf_for_each_map_elem", "5.13"),
    (169, "bpf_timer_init", "5.15"),  # in tracing (tp_btf) programs since then too
    (170, "bpf_timer_set_callback", "5.15"),
    (171, "bpf_timer_start", "5.15"),
    (174, "bpf_get_attach_cookie", "5.15"),
    (175, "bpf_task_pt_regs", "5.15"),
    (180, "bpf_find_vma", "5.17"),
    (181, "bpf_loop", "5.17"),
)
# The oldest helper id REQUIRED_HELPERS starts at: every helper the gadget
# calls from this one on is listed.
REQUIRED_HELPERS_FROM = 125
MINIMUM_KERNEL = "5.17"  # the newest of REQUIRED_HELPERS
OLDEST_TESTED_KERNEL = "6.1"  # the oldest kernel of tools/kernels/kernels.txt that traces


def helper_name(helper_id: int) -> Optional[str]:
    for number, name, _ in REQUIRED_HELPERS:
        if number == helper_id:
            return name
    return None


def helper_since(name: str) -> Optional[str]:
    for _, helper, since in REQUIRED_HELPERS:
        if helper == name:
            return since
    return None
