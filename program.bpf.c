// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * igdeadlock: lock-order tracing for deadlock detection.
 *
 * Uprobes on the C library's lock functions keep, per thread, the set of locks
 * it holds. Every time a thread requests a lock while holding others, that is
 * a lock dependency: one lock-order edge (held lock -> requested lock) per
 * held lock. Each dependency is recorded once, when first seen, into the
 * `edges` map; user space drains it through a map iterator and looks for
 * cycles. Futex waits tell which threads are blocked in a lock right now.
 *
 * Hot path (dependency already known): one lookup of the thread's state and a
 * compare against the thread's small dependency cache. Stacks are captured
 * and edges written only when a dependency is new.
 *
 * Contents
 *   1. The contract with user space     enums and bit layouts (gadget.py)
 *   2. Sizes                            map capacities, nesting depths
 *   3. Counters                         what could not be tracked
 *   4. Which processes are traced       the command's tree, IG's filters
 *   5. Small helpers                    hashes, the current task
 *   6. Per-thread lock state            held locks, dependency cache
 *   7. Lock identity                    generations of reused addresses
 *   8. Records                          what user space reads, and where they are built
 *   9. Acquisition sites                stacks and the files they point into
 *  10. Lock-order edges                 new dependencies, once each
 *  11. Acquire and release              what each lock function does
 *  12. Blocked threads                  futex waits inside a lock
 *  13. Processes                        the traced tree, execs, exits
 *  14. Datasources                      what IG sends to user space
 *  15. Probes                           one entry point per function
 */

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

/* ------------------------------------------------------------------------
 * 1. The contract with user space
 * The values below are igdeadlock/gadget.py's, checked by a unit test.
 * ------------------------------------------------------------------------ */

/* How a lock is held or requested. */
enum lock_mode {
	LOCK_MODE_EXCLUSIVE = 0, /* mutex, spinlock, rwlock write */
	LOCK_MODE_SHARED = 1, /* rwlock read */
};

/* What kind of lock object it is. */
enum lock_kind {
	LOCK_KIND_MUTEX = 0,
	LOCK_KIND_RWLOCK = 1,
	LOCK_KIND_SPINLOCK = 2,
	/* no lock: a futex wait outside the lock functions (a condition
	 * variable, a join, a barrier, a semaphore); blocked records only */
	LOCK_KIND_FUTEX = 3,
	/* Locks whose functions the client finds outside the C library's
	 * pthread ones (section 15, lock functions). None records its owner:
	 * releases and failed tries are seen by probes. */
	LOCK_KIND_SEMAPHORE =
		4, /* a semaphore used as a lock (CPython 3.11, 3.12) */
	LOCK_KIND_GMUTEX = 5, /* GLib's GMutex */
	LOCK_KIND_PYMUTEX = 6, /* CPython 3.13+'s PyMutex */
	LOCK_KIND_ABSL_MUTEX = 7, /* Abseil's absl::Mutex */
	LOCK_KIND_USER = 16, /* and up: declared with --lock-functions */
};

/* How an acquisition waits. */
enum acquire {
	ACQUIRE_BLOCKING = 0, /* waits until acquired */
	ACQUIRE_TRY = 1, /* never waits: no incoming edge */
	ACQUIRE_TIMED = 2, /* waits, but gives up at a deadline */
};

/* Which C library the probed lock functions belong to (the low byte of the
 * uprobe's attach cookie; 0 when ig attaches, which it does for glibc only). */
enum libc {
	LIBC_GLIBC = 0,
	LIBC_MUSL = 1,
};

/* What a process event says. */
enum process_change {
	PROCESS_EXEC = 0, /* it ran execve: it may use another C library now */
	PROCESS_FORK = 1, /* a new process in the traced command's tree */
};

/* Misuse of a lock: a hang, or an error the program may not check. */
enum misuse {
	MISUSE_RELOCK_HELD =
		0, /* a thread requests a non-recursive lock it holds */
	MISUSE_UNLOCK_NOT_OWNER =
		1, /* a thread unlocks a lock another one holds */
	MISUSE_EXIT_HOLDING = 2, /* a thread exits holding a lock */
};

/* Keys of the `counters` map: what could not be tracked. */
enum tracking_stat {
	STAT_HELD_OVERFLOW = 0, /* a lock not tracked: held set full */
	STAT_THREADS_FULL = 1, /* a thread not tracked: thread map full */
	STAT_EDGES_FULL = 2, /* an edge lost: edge map full */
	STAT_SITES_FULL = 3, /* a stack lost: stack map full */
	STAT_GENERATIONS_FULL = 4, /* a destroy not recorded */
	STAT_BLOCKED_FULL = 5, /* a blocked thread not recorded */
	STAT_TREE_FULL = 6, /* a process of the traced tree not tracked */
	STAT_REQUEST_LOST = 7, /* a lock request not handed over (see 11) */
};

/* A uprobe's attach cookie: the C library, and the size of the probed
 * function (musl's lock functions call each other; see nested_lock_call). */
#define COOKIE_LIBC_MASK 0xff /* bits 0-7: enum libc */
#define COOKIE_SIZE_SHIFT 32 /* bits 32-63: function size in bytes */
/* A lock function's probe (section 15) also carries what the function is: */
#define COOKIE_KIND_SHIFT 8 /* bits 8-15: enum lock_kind */
#define COOKIE_ARG_SHIFT 16 /* bits 16-18: which argument is the lock (0-5) */
#define COOKIE_MODE_SHIFT 19 /* bit 19: enum lock_mode */
#define COOKIE_HOW_SHIFT 20 /* bits 20-21: enum acquire */
#define COOKIE_RESULT_SHIFT 22 /* bits 22-23: enum acquired_when */
#define COOKIE_FLAGS_SHIFT 24 /* bits 24-31: LOCK_FLAG_* */

/* How a try or timed lock function's result tells that it acquired. */
enum acquired_when {
	ACQUIRED_ZERO = 0, /* returns 0 (pthread, sem_*) */
	ACQUIRED_TRUE = 1, /* returns a true bool or gboolean */
	ACQUIRED_ONE = 2, /* returns 1 (CPython's PY_LOCK_ACQUIRED) */
};

/* What a lock function's lock does besides being a lock. */
/* its holder may take it again (a recursive lock) */
#define LOCK_FLAG_RECURSIVE 0x1
/* its function sleeps on a futex other than the lock word (a per-thread
 * one): a futex wait between the function's entry and its return is a wait
 * for the lock; a return probe ends that stretch */
#define LOCK_FLAG_WAITS_ELSEWHERE 0x2
/* any thread may release it, not only the one that took it (a semaphore) */
#define LOCK_FLAG_ANY_RELEASER 0x4
/* a try that stands for a blocking acquisition: CPython tries every lock
 * without waiting first and waits only if that fails, so its lock order is
 * the one a blocking acquisition makes (held only if it succeeds) */
#define LOCK_FLAG_WAIT_INTENT 0x8

#define EEXIST 17 /* <errno.h>: vmlinux.h has no macros */
#define CLOCK_MONOTONIC 1 /* <linux/time.h> */

/* An acquisition site id: the CPU that numbered it above a per-CPU count
 * (unique without atomics); 0 means "no stack". */
#define SITE_CPU_SHIFT 48

/* ------------------------------------------------------------------------
 * 2. Sizes
 * ------------------------------------------------------------------------ */

#define MAX_HELD_LOCKS 64 /* nesting depth tracked per thread (power of 2) */
/* held locks a record carries (the first ones: gate locks are taken early) */
#define MAX_RECORDED_HELD 16
#define DEP_CACHE_SETS \
	8 /* dependency-cache sets: one per nesting depth, modulo (power of 2) */
#define DEP_CACHE_WAYS 2 /* requests a set keeps at once */
#define DEP_CACHE_ENTRIES (DEP_CACHE_SETS * DEP_CACHE_WAYS)
#define MAX_STACK_FRAMES 16 /* user frames kept per acquisition site */
#define MAX_PYTHON_FRAMES \
	8 /* Python frames kept per site of a CPython process */
#define MAX_PYTHON_THREADS 64 /* thread states walked to find the current one */
#define MAX_PYTHON_PROCESSES 1024
#define MAX_PYTHON_CODES 4096 /* new code objects between two fetches */
#define MAX_SEEN_PYTHON_CODES 65536
#define PYTHON_NAME_MAX 64 /* longest file or function name kept */
#define PYTHON_LINETABLE_MAX 256 /* line-table bytes kept (power of 2) */
/* PyASCIIObject.state: the string is compact and ASCII */
#define PY_UNICODE_COMPACT_ASCII 0x60
#define FILE_PATH_MAX 256 /* longest mapped-file path reported (power of 2) */
#define MAX_PATH_PARTS 32 /* directory levels walked for a path (power of 2) */

#define MAX_THREADS 16384 /* power of 2: slots are picked by masking */
#define THREAD_SLOT_PROBES 8 /* slots tried for a new thread */
#define MAX_KNOWN_DEPS 131072 /* dependencies remembered (LRU) */
/* New edges and stacks between two fetches. These two maps are allocated as
 * they fill (BPF_F_NO_PREALLOC) and drained by every fetch: the sizes bound a
 * burst, not the memory they use at rest. */
#define MAX_EDGES 131072
#define MAX_SITES 131072
#define MAX_FILES 1024 /* new mapped files between two fetches */
#define MAX_SEEN_FILES 4096
#define MAX_LOCK_GENERATIONS 16384
#define MAX_BLOCKED_THREADS 4096
#define MAX_HOLDERS 16384 /* held locks that any thread may release */
#define MAX_UNTRACED_WAITS \
	4096 /* (process, wait site) pairs of untraced waits */
#define MAX_COUNTING_SEMAPHORES 4096 /* semaphores found to be no locks */
#define MAX_COUNTERS 4096 /* (counter, process) pairs between two fetches */

#define MAX_TREE_PROCESSES 16384 /* processes of a traced command's tree */
#define MAX_LOCK_PROCESSES 16384 /* processes with lock state at once */
#define EXE_NAME_MAX 128 /* longest executable name in process events */

#define LOCK_CALL_RANGES \
	2 /* musl nests lock functions two deep (lock, timedlock, trylock) */

#define GOLDEN_RATIO_64 0x9E3779B97F4A7C15ULL

/* Where the stack pointer is at a return probe, relative to the entry: x86
 * `ret` pops the return address, arm64 returns through the link register. */
#if defined(bpf_target_x86)
#define RETURN_SP_OFFSET 8
#else
#define RETURN_SP_OFFSET 0
#endif

/* The kernel's page size (vm_pgoff counts pages): 4 KiB on x86-64; an arm64
 * kernel is built for 4, 16 or 64 KiB pages (CONFIG_ARM64_PAGE_SHIFT, which
 * every arm64 kernel has). Not __weak: IG's loader (cilium/ebpf) refuses a
 * weak __kconfig extern, and ig checks one architecture's object at random
 * when it builds the image, so a weak one failed one build in four. */
#if defined(bpf_target_arm64)
extern int CONFIG_ARM64_PAGE_SHIFT __kconfig;
#define KERNEL_PAGE_SHIFT CONFIG_ARM64_PAGE_SHIFT
#else
#define KERNEL_PAGE_SHIFT 12
#endif

/* ------------------------------------------------------------------------
 * 3. Counters
 * Rare events only: each fetch deletes the entries, the next event re-creates
 * its own.
 * ------------------------------------------------------------------------ */

struct counter_key {
	__u32 counter; /* STAT_* */
	gadget_pid pid; /* the process it happened in: reports say where */
};

struct counter_value {
	__u64 count; /* events since the previous fetch */
};

/* STAT_* -> how often it happened since the last fetch */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_COUNTERS);
	__type(key, struct counter_key);
	__type(value, struct counter_value);
} counters SEC(".maps");

/* Rare events only: the fetch deletes the entry, the next one re-creates it. */
static __always_inline void count_stat(__u32 index)
{
	struct counter_key key = { .counter = index,
				   .pid = bpf_get_current_pid_tgid() >> 32 };
	struct counter_value one = { .count = 1 }, *value;

	value = bpf_map_lookup_elem(&counters, &key);
	if (value) {
		__sync_fetch_and_add(&value->count, 1);
		return;
	}
	if (bpf_map_update_elem(&counters, &key, &one, BPF_NOEXIST)) {
		value = bpf_map_lookup_elem(&counters, &key);
		if (value)
			__sync_fetch_and_add(&value->count, 1);
	}
}

/* ------------------------------------------------------------------------
 * 4. Which processes are traced
 * IG's filters (mount namespaces, pid, comm...) and, for `igdeadlock trace`,
 * the command's process tree (tree_pid and its descendants).
 * ------------------------------------------------------------------------ */

/* The traced command's process (0: trace every process): only it and its
 * descendants are traced, so bystanders produce no records. */
const volatile gadget_pid tree_pid = 0;
GADGET_PARAM(tree_pid);

/* process -> 1: the descendants of tree_pid that are still running */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TREE_PROCESSES);
	__type(key, gadget_pid);
	__type(value, __u8);
} tree_processes SEC(".maps");

static __always_inline bool in_traced_tree(gadget_pid pid)
{
	return pid == tree_pid || bpf_map_lookup_elem(&tree_processes, &pid);
}

/* Filters cost nothing unless the user set one (the constants are frozen). */
static __always_inline bool current_is_filtered_out(void)
{
	if (!gadget_filter_by_mntns && targ_pid == 0 && targ_tid == 0 &&
	    targ_uid == GADGET_INVALID_ID && targ_gid == GADGET_INVALID_ID &&
	    targ_comm[0] == '\0' && tree_pid == 0)
		return false;
	if (tree_pid && !in_traced_tree(bpf_get_current_pid_tgid() >> 32))
		return true;
	return gadget_should_discard_data_current();
}

/* ------------------------------------------------------------------------
 * 5. Small helpers
 * ------------------------------------------------------------------------ */

static __always_inline __u64 mix64(__u64 value)
{
	value ^= value >> 33;
	value *= GOLDEN_RATIO_64;
	value ^= value >> 29;
	return value;
}

/* Hash of one held lock; XOR-ing them gives an order-independent set hash. */
static __always_inline __u64 held_lock_hash(__u64 lock, __u32 gen, __u8 mode)
{
	return mix64(lock ^ ((__u64)gen << 48) ^ ((__u64)mode << 62));
}

/* Start time of the current process (boot clock, as /proc/PID/stat has it):
 * (pid, start) names a process uniquely. */
static __always_inline __u64 current_process_start(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, group_leader, start_boottime);
}

static __always_inline __u32 current_session_id(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, signal, pids[PIDTYPE_SID], numbers[0].nr);
}

/* The current thread id: a field of the task, cheaper to reach than through
 * bpf_get_current_pid_tgid() (helper calls dominate the hot path). */
static __always_inline gadget_tid current_tid(void)
{
	return bpf_get_current_task_btf()->pid;
}

/* Return address of the lock function: the calling site, even without frame
 * pointers (x86: on top of the stack at entry; arm64: in the link register). */
static __always_inline __u64 caller_address(struct pt_regs *ctx)
{
#if defined(bpf_target_x86)
	__u64 ret = 0;

	bpf_probe_read_user(&ret, sizeof(ret), (void *)PT_REGS_SP(ctx));
	return ret;
#elif defined(bpf_target_arm64)
	return PT_REGS_RET(ctx);
#else
	return 0;
#endif
}

/* ------------------------------------------------------------------------
 * 6. Per-thread lock state
 * A thread's state lives in a slot of thread_slots (an array: lookups are
 * plain loads); thread_to_held_mutexes tells a thread's slot, slot_owners who
 * owns a slot, last_thread the thread that last ran on each CPU (the hot
 * path finds its slot without a hash lookup).
 * ------------------------------------------------------------------------ */

struct held_lock {
	__u64 lock; /* user address of the lock object */
	__u64 site; /* stackmap key of the acquisition, 0 if unknown */
	__u32 gen; /* generation of that address (bumped by destroy) */
	__u16 depth; /* recursive acquisitions still to release */
	__u8 mode; /* LOCK_MODE_* */
	__u8 kind; /* LOCK_KIND_* */
};

/* A dependency this thread already recorded: no need to look further. */
struct dep_cache_entry {
	__u64 lock;
	__u64 context; /* held_hash when it was requested */
	__u64 site;
	__u32 gen;
	__u8 mode;
	__u8 how;
	__u8 valid;
	__u8 __pad;
};

/* A try or timed acquisition waiting for its return probe. */
struct pending_acquire {
	__u64 lock;
	__u64 site;
	__u64 sp; /* stack pointer at entry: tells its return from a nested call's */
	__u32 gen;
	__u8 mode;
	__u8 kind;
	__u8 active;
	__u8 recursive; /* the lock is already held: success only adds depth */
	__u8 flags; /* LOCK_FLAG_* of the lock function */
	__u8 __pad[7];
};

/* The code of a lock function this thread entered (musl only). */
struct code_range {
	__u64 start;
	__u64 end;
};

/* The last lock-function entry of a thread (musl only). */
struct lock_call {
	__u64 sp; /* stack pointer at the entry */
	__u64 lock;
	__u64 start; /* the function entered */
};

/* The acquisition the thread may be blocked in: set when a blocking or timed
 * lock function is entered, cleared by the thread's next release or by the
 * return of a timed one. A futex wait on that lock means it is blocked. */
struct wait_state {
	__u64 lock;
	__u64 site;
	__u64 since; /* boot time of the first futex wait of this acquisition */
	__u32 gen;
	__u8 mode;
	__u8 kind;
	__u8 how;
	__u8 waiting; /* inside a futex wait on the lock right now */
	__u8 flags; /* LOCK_FLAG_* of the lock function */
	__u8 __pad[7];
};

struct thread_locks {
	struct held_lock held[MAX_HELD_LOCKS];
	struct dep_cache_entry cache[DEP_CACHE_ENTRIES];
	struct pending_acquire pending;
	struct wait_state wait;
	__u64 held_hash; /* order-independent hash of the held set */
	__u32 nheld;
	__u32 epoch; /* destroy_epoch the cache was filled under */
	gadget_tid owner; /* thread whose state this slot holds, 0 if free */
	/* the owner's id in its own pid namespace (C libraries record lock
	 * owners by it), and its process */
	__u32 ns_tid;
	gadget_pid pid;
	__u8 libc; /* LIBC_*: how to read owners from its locks */
	__u8 next_lock_call; /* next entry of lock_calls to replace */
	__u8 __pad[2];
	struct code_range lock_calls[LOCK_CALL_RANGES];
	struct lock_call last_call;
	__u8 cache_victim
		[DEP_CACHE_SETS]; /* way of each set the next miss replaces */
};

/* slot -> the lock state of the thread that claimed it */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, struct thread_locks);
} thread_slots SEC(".maps");

/* thread id -> its slot in thread_slots */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, gadget_tid);
	__type(value, __u32);
} thread_to_held_mutexes SEC(".maps");

/* slot -> thread that claimed it: a slot is claimed by an insert only one
 * thread can win */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, gadget_tid);
} slot_owners SEC(".maps");

struct cpu_thread {
	gadget_tid tid;
	__u32 slot;
};

/* per CPU: the thread that last used the tracer here and its slot, so the
 * hot path finds a thread's state without a hash lookup */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_thread);
} last_thread SEC(".maps");

/* Initial state of a thread: too big for the BPF stack, so kept read-only. */
static const struct thread_locks empty_thread = {};

/* The C library of the probe that runs: the attach cookie's low byte. */
static __always_inline __u8 probed_libc(void *ctx)
{
	return (bpf_get_attach_cookie(ctx) & COOKIE_LIBC_MASK) == LIBC_MUSL ?
		       LIBC_MUSL :
		       LIBC_GLIBC;
}

/* process with lock state -> how many destroyed lock addresses it has in
 * lock_generations. Its threads' other futex waits are reported too (a
 * process whose every thread waits forever hangs without a lock cycle), and
 * its exit has generations to forget only if the count is not 0. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LOCK_PROCESSES);
	__type(key, gadget_pid);
	__type(value, __u32);
} lock_processes SEC(".maps");

struct ns_thread_key {
	gadget_pid pid;
	__u32 ns_tid;
};

/* (process, thread id in the process's pid namespace) -> thread id, for
 * threads in a pid namespace of their own (containers) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, struct ns_thread_key);
	__type(value, gadget_tid);
} ns_threads SEC(".maps");

/* The current thread's id in its own pid namespace: how it sees itself. */
static __always_inline __u32 current_ns_tid(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	__u32 nr = 0;

	bpf_probe_read_kernel(
		&nr, sizeof(nr),
		(void *)pid + bpf_core_field_offset(struct pid, numbers) +
			level * bpf_core_type_size(struct upid) +
			bpf_core_field_offset(struct upid, nr));
	return nr;
}

/* Claim a free slot for a new thread (first lock operation, in the probe
 * `ctx`): only one thread can insert a given slot into slot_owners. */
static __always_inline struct thread_locks *
claim_slot(void *ctx, gadget_tid tid, __u32 *claimed)
{
	gadget_pid pid = bpf_get_current_pid_tgid() >> 32;
	struct thread_locks *t;
	__u32 index;
	/* an int: kernels before 6.4 call the map's update function directly,
	 * which returned an int there, so only the low 32 bits of the result
	 * are an errno (-EEXIST read as 64 bits was 0xffffffef: no thread of
	 * a process could claim a slot after its first one) */
	int err;

	/* first, so that a thread with a slot always has its process here: an
	 * exit outside lock_processes has no thread state to forget */
	err = bpf_map_update_elem(&lock_processes, &pid, &(__u32){ 0 },
				  BPF_NOEXIST);
	if (err && err != -EEXIST)
		return NULL;
	for (int probe = 0; probe < THREAD_SLOT_PROBES; probe++) {
		index = (mix64(tid) + probe) & (MAX_THREADS - 1);
		if (bpf_map_update_elem(&slot_owners, &index, &tid,
					BPF_NOEXIST))
			continue;
		bpf_map_update_elem(&thread_slots, &index, &empty_thread,
				    BPF_ANY);
		t = bpf_map_lookup_elem(&thread_slots, &index);
		if (!t || bpf_map_update_elem(&thread_to_held_mutexes, &tid,
					      &index, BPF_NOEXIST)) {
			bpf_map_delete_elem(&slot_owners, &index);
			return NULL;
		}
		t->owner = tid;
		t->pid = pid;
		t->ns_tid = current_ns_tid();
		if (t->ns_tid != tid) {
			struct ns_thread_key key = { t->pid, t->ns_tid };

			bpf_map_update_elem(&ns_threads, &key, &tid, BPF_ANY);
		}
		t->libc = probed_libc(ctx);
		*claimed = index;
		return t;
	}
	return NULL;
}

/* Give a thread's slot back (it exited, or left the traced set). */
static __always_inline void release_thread(gadget_tid tid)
{
	struct thread_locks *t;
	__u32 *slot, index;

	slot = bpf_map_lookup_elem(&thread_to_held_mutexes, &tid);
	if (!slot)
		return;
	index = *slot;
	t = bpf_map_lookup_elem(&thread_slots, &index);
	if (t && t->owner == tid) {
		if (t->ns_tid != tid) {
			struct ns_thread_key key = { t->pid, t->ns_tid };

			bpf_map_delete_elem(&ns_threads, &key);
		}
		t->owner = 0;
	}
	bpf_map_delete_elem(&slot_owners, &index);
	bpf_map_delete_elem(&thread_to_held_mutexes, &tid);
}

/*
 * The thread's lock state. Hot path: this CPU ran the same thread last, and
 * array lookups compile to plain loads. Otherwise the tid -> slot hash tells;
 * a lock probe (`probe_ctx`, NULL elsewhere) claims a slot on the thread's
 * first lock operation.
 */
static __always_inline struct thread_locks *thread_state(gadget_tid tid,
							 void *probe_ctx)
{
	struct cpu_thread *last =
		bpf_map_lookup_elem(&last_thread, &(__u32){ 0 });
	struct thread_locks *t;
	__u32 *slot, index;

	if (!last)
		return NULL;
	if (last->tid == tid) {
		index = last->slot;
		t = bpf_map_lookup_elem(&thread_slots, &index);
		if (t && t->owner == tid)
			return t;
	}
	slot = bpf_map_lookup_elem(&thread_to_held_mutexes, &tid);
	if (slot) {
		index = *slot;
		t = bpf_map_lookup_elem(&thread_slots, &index);
		if (!t || t->owner != tid)
			return NULL;
	} else {
		if (!probe_ctx || current_is_filtered_out())
			return NULL;
		t = claim_slot(probe_ctx, tid, &index);
		if (!t) {
			count_stat(STAT_THREADS_FULL);
			return NULL;
		}
	}
	last->tid = tid;
	last->slot = index;
	return t;
}

/* An index into held[] the verifier can see is in bounds (callers have
 * already checked it; the mask is only there for the verifier). */
static __always_inline __u32 held_index(__u32 index)
{
	barrier_var(index);
	return index & (MAX_HELD_LOCKS - 1);
}

/* Index of `lock` in the thread's held set, or -1. Scans from the most
 * recently acquired lock: releases are mostly in reverse order. */
static __always_inline int find_held(struct thread_locks *t, __u64 lock)
{
	__u32 nheld = t->nheld;

	for (int k = 0; k < MAX_HELD_LOCKS; k++) {
		int i = (int)nheld - 1 - k;

		if (i < 0)
			break;
		if (t->held[held_index(i)].lock == lock)
			return i;
	}
	return -1;
}

/* The thread's held set into a record's held_locks/held_gens/held_modes (the
 * first MAX_RECORDED_HELD: gate locks are taken early), without `skip` (a
 * blocking lock pushed at entry and waited for, not held: the top entry, at
 * depth 1; 0: skip none). Returns how many it holds, all of them. The count
 * is not a loop variable: a loop that carries one costs the verifier a state
 * per value. */
static __always_inline __u8 copy_held_set(struct thread_locks *t, __u64 *locks,
					  __u32 *gens, __u8 *modes, __u64 skip)
{
	__u32 nheld = t->nheld;
	struct held_lock *top;

	if (nheld && skip) {
		top = &t->held[held_index(nheld - 1)];
		if (top->lock == skip && top->depth == 1)
			nheld--;
	}
	for (int i = 0; i < MAX_RECORDED_HELD; i++) {
		if (i >= nheld)
			break;
		locks[i] = t->held[i].lock;
		gens[i] = t->held[i].gen;
		modes[i] = t->held[i].mode;
	}
	return nheld;
}

/* ------------------------------------------------------------------------
 * 7. Lock identity
 * A destroyed lock's address names a new lock afterwards: its generation goes
 * up, and threads drop their cached dependencies (destroy_epoch).
 * ------------------------------------------------------------------------ */

/* Bumped by every destroy: tells threads their dependency cache is stale. */
volatile __u32 destroy_epoch = 0;

struct lock_id {
	__u64 lock;
	__u32 pid;
	__u32 __pad;
};

/* (process, lock address) -> generation, bumped on destroy */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LOCK_GENERATIONS);
	__type(key, struct lock_id);
	__type(value, __u32);
} lock_generations SEC(".maps");

/* Generation of a lock address: 0 until it is first destroyed. */
static __always_inline __u32 lock_generation(__u32 pid, __u64 lock)
{
	struct lock_id id = { .lock = lock, .pid = pid };
	__u32 *gen = bpf_map_lookup_elem(&lock_generations, &id);

	return gen ? *gen : 0;
}

/* ------------------------------------------------------------------------
 * 8. Records
 * What user space reads from the maps below, and the scratch space records
 * too big for the BPF stack are built in.
 * ------------------------------------------------------------------------ */

struct lock_edge_key {
	__u64 from_lock; /* held lock */
	__u64 to_lock; /* requested lock */
	__u64 context; /* hash of the held set: one record per lock set */
	gadget_pid pid;
	gadget_tid tid;
	__u8 to_mode;
	__u8 to_how;
	__u8 __pad[6];
};

struct lock_edge {
	gadget_mntns_id mntns_id;
	__u64 process_start; /* tells a reused pid apart */
	__u32 session_id; /* selects a command's process tree */
	__u32 __pad0;
	__u64 from_site; /* stackmap key: where from_lock was acquired */
	__u64 to_site; /* stackmap key: where to_lock was requested */
	__u32 from_gen;
	__u32 to_gen;
	__u8 from_mode;
	__u8 from_kind;
	__u8 to_kind;
	__u8 held_count;
	__u32 __pad;
	gadget_comm comm[TASK_COMM_LEN];
	/* every lock held when the edge was made (from_lock included) */
	__u64 held_locks[MAX_RECORDED_HELD];
	__u32 held_gens[MAX_RECORDED_HELD];
	__u8 held_modes[MAX_RECORDED_HELD];
};

struct stack_key {
	__u64 site;
};

/* A CPython process's Python frames at a site, innermost first: each code
 * object and the instruction it was at (user space reads their files,
 * functions and lines from the running process). */
struct python_frames {
	__u32 python_frame_count;
	__u32 __pad;
	__u64 python_code[MAX_PYTHON_FRAMES];
	__u32 python_instr[MAX_PYTHON_FRAMES];
};

/* Looking for the current thread among a CPython interpreter's thread states. */
struct python_thread_search {
	__u64 state; /* the thread state being looked at, then the one found */
	__u64 tid; /* the current thread as CPython numbers it */
	__u64 found;
};

struct stack_frames {
	gadget_pid stack_pid;
	__u32 frame_count;
	/* per frame: offset in the mapped file, or the address if anonymous */
	__u64 frame_offsets[MAX_STACK_FRAMES];
	/* per frame: file_id of the mapped file, 0 if anonymous */
	__u64 frame_files[MAX_STACK_FRAMES];
	/* per frame: the address itself (a frame the VMA lookup missed, under
	 * mmap_lock contention, is resolved from another stack with it) */
	__u64 frame_addresses[MAX_STACK_FRAMES];
	struct python_frames python;
};

/* Where a CPython process keeps its threads' frames (set by the client, which
 * knows the interpreter's version and where its _PyRuntime is). */
struct python_layout {
	__u64 runtime; /* address of _PyRuntime in the process */
	__u16 interpreters_head; /* _PyRuntimeState.interpreters.head */
	__u16 tstate_current; /* _PyRuntimeState.gilstate.tstate_current */
	__u16 threads_head; /* PyInterpreterState.threads.head */
	__u16 tstate_next; /* PyThreadState.next */
	__u16 native_thread_id; /* PyThreadState.native_thread_id */
	__u16 cframe; /* PyThreadState.cframe */
	__u16 current_frame; /* _PyCFrame.current_frame */
	__u16 frame_code; /* _PyInterpreterFrame.f_code */
	__u16 frame_previous; /* _PyInterpreterFrame.previous */
	__u16 frame_prev_instr; /* _PyInterpreterFrame.prev_instr */
	__u16 code_adaptive; /* PyCodeObject.co_code_adaptive: instruction 0 */
	/* what naming a code object reads (python_codes) */
	__u16 co_filename; /* PyCodeObject.co_filename */
	__u16 co_qualname; /* PyCodeObject.co_qualname */
	__u16 co_firstlineno; /* PyCodeObject.co_firstlineno */
	__u16 co_linetable; /* PyCodeObject.co_linetable */
	__u16 ascii_data; /* sizeof(PyASCIIObject): a compact ASCII string's characters */
	__u16 unicode_state; /* PyASCIIObject.state */
	__u16 bytes_size; /* PyVarObject.ob_size */
	__u16 bytes_data; /* PyBytesObject.ob_sval */
	__u16 __pad;
};

struct python_code_key {
	gadget_pid pid;
	__u32 __pad;
	__u64 code; /* address of the code object */
};

/* What names a code object: read while the process runs, so that a report
 * made after it exited still names its Python frames. */
struct python_code {
	__s32 first_line; /* co_firstlineno */
	__u32 linetable_size; /* bytes of co_linetable copied */
	char filename[PYTHON_NAME_MAX]; /* co_filename, if ASCII (else empty) */
	char qualname[PYTHON_NAME_MAX]; /* co_qualname, if ASCII */
	__u8 linetable[PYTHON_LINETABLE_MAX]; /* the start of co_linetable */
};

/* (process, code object) -> its names and line table, new since the last fetch */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_PYTHON_CODES);
	__type(key, struct python_code_key);
	__type(value, struct python_code);
} python_codes SEC(".maps");

/* (process, code object) -> 1 once sent */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SEEN_PYTHON_CODES);
	__type(key, struct python_code_key);
	__type(value, __u8);
} seen_python_codes SEC(".maps");

/* CPython process -> where its frames are */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PYTHON_PROCESSES);
	__type(key, gadget_pid);
	__type(value, struct python_layout);
} python_processes SEC(".maps");

struct file_key {
	__u64 file_id;
};

struct file_info {
	__u64 inode;
	__u32 device;
	__u32 __pad;
	char path[FILE_PATH_MAX];
};

struct blocked_key {
	gadget_tid tid;
};

struct blocked_thread {
	gadget_mntns_id mntns_id;
	__u64 process_start;
	__u64 lock; /* the lock the thread waits for (the futex word: kind futex) */
	__u64 site; /* stackmap key of where it requested the lock, 0 if none */
	__u64 since; /* boot time (ns) it started waiting */
	__u64 observed; /* boot time (ns) of the wait that made this record */
	gadget_pid pid;
	__u32 gen;
	__u32 owner_tid; /* glibc's owner of the lock (mutex, rwlock writer), 0 if none */
	__u32 session_id;
	__u8 mode;
	__u8 kind;
	__u8 how;
	__u8 held_count;
	__u32 process_threads; /* threads its process had when the wait began */
	gadget_comm comm[TASK_COMM_LEN];
	/* the locks the thread holds while it waits */
	__u64 held_locks[MAX_RECORDED_HELD];
	__u32 held_gens[MAX_RECORDED_HELD];
	__u8 held_modes[MAX_RECORDED_HELD];
	/* a futex wait outside the lock functions: the user stack's return
	 * addresses (resolved by user space while the process hangs) */
	__u32 wait_frame_count;
	__u32 __pad2;
	__u64 wait_frames[MAX_STACK_FRAMES];
};

/* Walking a file's path upwards: dentries, crossing mount points. */
struct path_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *parts[MAX_PATH_PARTS]; /* leaf first */
	__u32 count;
};

/* scratch space for records and buffers too big for the BPF stack (512
 * bytes for a whole call chain: the stack holds small things only) */
struct scratch_buffers {
	struct lock_edge_key edge_key;
	struct lock_edge edge;
	struct blocked_thread blocked;
	struct stack_frames stack;
	struct file_info file;
	__u64 raw_frames[MAX_STACK_FRAMES + 1];
	char path[2 * FILE_PATH_MAX];
	struct path_walk walk;
	/* per frame of `stack`: the mapped file (a struct file *), 0 if none */
	__u64 frame_file_pointers[MAX_STACK_FRAMES];
	/* the Python frames capture_python_frames found, for capture_stack */
	struct python_frames python;
	struct python_code python_code;
	struct python_code_key python_key;
	struct python_thread_search python_search;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch_buffers);
} scratch_space SEC(".maps");

/* ------------------------------------------------------------------------
 * 9. Acquisition sites
 * The user stack of a new dependency's lock request, each frame resolved to
 * (file, offset) while the process runs, so that it can be symbolized after
 * it is gone; the path of each file is sent once.
 * ------------------------------------------------------------------------ */

/* acquisition site -> its user stack, resolved to (file, offset) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_SITES);
	__type(key, struct stack_key);
	__type(value, struct stack_frames);
} stackmap SEC(".maps");

/* file_id -> path of a file that stack frames point into */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FILES);
	__type(key, struct file_key);
	__type(value, struct file_info);
} files SEC(".maps");

/* file_id -> 1 once its path was sent */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SEEN_FILES);
	__type(key, __u64);
	__type(value, __u8);
} seen_files SEC(".maps");

/* per CPU: acquisition sites numbered so far */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} site_counter SEC(".maps");

struct vma_lookup {
	__u64 address;
	__u64 offset;
	__u64 file_id;
	struct file *file;
};

static long resolve_vma(struct task_struct *task, struct vm_area_struct *vma,
			struct vma_lookup *lookup)
{
	struct file *file = BPF_CORE_READ(vma, vm_file);
	__u64 inode, device;

	if (!file)
		return 0;
	inode = BPF_CORE_READ(file, f_inode, i_ino);
	device = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	lookup->offset = lookup->address - BPF_CORE_READ(vma, vm_start) +
			 (BPF_CORE_READ(vma, vm_pgoff) << KERNEL_PAGE_SHIFT);
	lookup->file_id = mix64(inode ^ (device << 40)) | 1;
	lookup->file = file;
	return 0;
}

static __always_inline struct mount *mount_of(struct vfsmount *vfsmnt)
{
	return (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
}

/* What both steps of a path walk use: bpf_loop hands its callbacks a pointer
 * to the stack, so the walk itself (in scratch space) is reached from here. */
struct path_writer {
	struct path_walk *walk;
	char *buf; /* 2 * FILE_PATH_MAX bytes */
	__u32 length;
};

/* One bpf_loop step: record a path component or climb to the parent mount. */
static long collect_path_part(__u32 index, struct path_writer *w)
{
	struct path_walk *walk = w->walk;
	struct dentry *dentry = walk->dentry;
	struct vfsmount *vfsmnt = walk->vfsmnt;
	struct mount *mnt = walk->mnt, *up;
	struct dentry *root = BPF_CORE_READ(vfsmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

	if (dentry == root || dentry == parent) {
		up = BPF_CORE_READ(mnt, mnt_parent);
		if (dentry != root || up == mnt)
			return 1; /* the root of everything */
		walk->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		walk->mnt = up;
		walk->vfsmnt =
			(void *)up + bpf_core_field_offset(struct mount, mnt);
		return 0;
	}
	if (walk->count >= MAX_PATH_PARTS)
		return 1;
	walk->parts[walk->count & (MAX_PATH_PARTS - 1)] = dentry;
	walk->count++;
	walk->dentry = parent;
	return 0;
}

/* One bpf_loop step: append "/name" for the next component, root first. */
static long append_path_part(__u32 index, struct path_writer *w)
{
	__u32 count = w->walk->count;
	struct dentry *dentry;
	const unsigned char *name;
	long copied;

	if (index >= count || w->length >= FILE_PATH_MAX - 1)
		return 1;
	dentry = w->walk->parts[(count - 1 - index) & (MAX_PATH_PARTS - 1)];
	name = BPF_CORE_READ(dentry, d_name.name);
	w->buf[w->length & (FILE_PATH_MAX - 1)] = '/';
	w->length++;
	copied = bpf_probe_read_kernel_str(
		&w->buf[w->length & (FILE_PATH_MAX - 1)], FILE_PATH_MAX, name);
	if (copied > 1)
		w->length += copied - 1;
	return 0;
}

/* Path of a mapped file as its process sees it (bounded, best effort), with
 * `walk` and `buf` as scratch space. */
static __always_inline void
read_file_path(struct file *file, struct path_walk *walk, char *buf, char *out)
{
	struct path_writer writer = { .walk = walk, .buf = buf };

	walk->dentry = BPF_CORE_READ(file, f_path.dentry);
	walk->vfsmnt = BPF_CORE_READ(file, f_path.mnt);
	walk->mnt = mount_of(walk->vfsmnt);
	walk->count = 0;
	bpf_loop(2 * MAX_PATH_PARTS, collect_path_part, &writer, 0);
	bpf_loop(MAX_PATH_PARTS, append_path_part, &writer, 0);
	if (writer.length > FILE_PATH_MAX - 1)
		writer.length = FILE_PATH_MAX - 1;
	buf[writer.length & (FILE_PATH_MAX - 1)] = '\0';
	bpf_probe_read_kernel(out, FILE_PATH_MAX, buf);
	out[FILE_PATH_MAX - 1] = '\0';
}

/* Send the path of a mapped file the first time a frame points into it.
 * A global function: the verifier checks it once, not at every call. */
__noinline int send_file_path(__u64 file_id, __u64 file_pointer)
{
	struct file *file = (struct file *)file_pointer;
	struct scratch_buffers *s;
	struct file_key key = { .file_id = file_id };

	if (bpf_map_lookup_elem(&seen_files, &file_id))
		return 0;
	s = bpf_map_lookup_elem(&scratch_space, &(__u32){ 0 });
	if (!s)
		return 0;
	__builtin_memset(&s->file, 0, sizeof(s->file));
	s->file.inode = BPF_CORE_READ(file, f_inode, i_ino);
	s->file.device = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	read_file_path(file, &s->walk, s->path, s->file.path);
	if (!bpf_map_update_elem(&files, &key, &s->file, BPF_ANY))
		bpf_map_update_elem(&seen_files, &file_id, &(__u8){ 1 },
				    BPF_ANY);
	return 0;
}

/* bpf_loop hands its callback a pointer to the stack: the search itself is
 * in scratch space */
struct python_search_step {
	const struct python_layout *layout;
	struct python_thread_search *search;
};

static __always_inline __u64 read_user_word(__u64 address)
{
	__u64 word = 0;

	bpf_probe_read_user(&word, sizeof(word), (void *)address);
	return word;
}

/* One bpf_loop step: is this thread state the current thread's? */
static long python_thread_is_current(__u32 index,
				     struct python_search_step *step)
{
	const struct python_layout *layout = step->layout;
	struct python_thread_search *search = step->search;

	if (!search->state)
		return 1;
	if (read_user_word(search->state + layout->native_thread_id) ==
	    search->tid) {
		search->found = 1;
		return 1;
	}
	search->state = read_user_word(search->state + layout->tstate_next);
	return 0;
}

/* An ASCII string object's characters into `out` (empty if not ASCII). */
static __always_inline void read_python_name(const struct python_layout *layout,
					     __u64 string, char *out)
{
	__u32 state = 0;

	out[0] = '\0';
	bpf_probe_read_user(&state, sizeof(state),
			    (void *)(string + layout->unicode_state));
	if ((state & PY_UNICODE_COMPACT_ASCII) != PY_UNICODE_COMPACT_ASCII)
		return;
	bpf_probe_read_user_str(out, PYTHON_NAME_MAX,
				(void *)(string + layout->ascii_data));
}

/* Send what names a code object, the first time one of its frames is seen
 * (`key` and `named` are scratch space: the stack is kept small). */
static __always_inline void send_python_code(const struct python_layout *layout,
					     struct python_code_key *key,
					     struct python_code *named)
{
	__u64 code = key->code;
	__u64 table;
	__u64 size;

	if (bpf_map_lookup_elem(&seen_python_codes, key))
		return;
	named->first_line = 0;
	bpf_probe_read_user(&named->first_line, sizeof(named->first_line),
			    (void *)(code + layout->co_firstlineno));
	read_python_name(layout, read_user_word(code + layout->co_filename),
			 named->filename);
	read_python_name(layout, read_user_word(code + layout->co_qualname),
			 named->qualname);
	table = read_user_word(code + layout->co_linetable);
	size = read_user_word(table + layout->bytes_size);
	if (size > PYTHON_LINETABLE_MAX)
		size = PYTHON_LINETABLE_MAX;
	named->linetable_size = size;
	if (size)
		bpf_probe_read_user(named->linetable,
				    size & (PYTHON_LINETABLE_MAX - 1) ?:
					    PYTHON_LINETABLE_MAX,
				    (void *)(table + layout->bytes_data));
	if (!bpf_map_update_elem(&python_codes, key, named, BPF_NOEXIST))
		bpf_map_update_elem(&seen_python_codes, key, &(__u8){ 1 },
				    BPF_ANY);
}

struct python_frame_walk {
	const struct python_layout *layout;
	struct scratch_buffers *s;
	__u64 frame; /* the next frame to record */
	gadget_pid pid;
};

/* One bpf_loop step of the frame walk: record a frame, go to its caller. */
static long python_frame_step(__u32 index, struct python_frame_walk *walk)
{
	const struct python_layout *layout = walk->layout;
	struct python_frames *stack = &walk->s->python;
	__u64 code, instr;
	__u32 n = stack->python_frame_count;

	if (!walk->frame || n >= MAX_PYTHON_FRAMES)
		return 1;
	code = read_user_word(walk->frame + layout->frame_code);
	instr = read_user_word(walk->frame + layout->frame_prev_instr);
	if (code) {
		walk->s->python_key.pid = walk->pid;
		walk->s->python_key.code = code;
		send_python_code(layout, &walk->s->python_key,
				 &walk->s->python_code);
		stack->python_code[n & (MAX_PYTHON_FRAMES - 1)] = code;
		/* code units of 2 bytes from the first instruction */
		stack->python_instr[n & (MAX_PYTHON_FRAMES - 1)] =
			(instr - code - layout->code_adaptive) / 2;
		stack->python_frame_count = n + 1;
	}
	walk->frame = read_user_word(walk->frame + layout->frame_previous);
	return 0;
}

/*
 * The current thread's Python frames, if its process is CPython (CPython
 * 3.11's layout: thread state -> _PyCFrame -> _PyInterpreterFrame chain). The
 * thread that holds the GIL is _PyRuntime's tstate_current; a thread that
 * released it to wait is found in the interpreter's list of thread states.
 * A global function: verified once, its own stack.
 */
__noinline int capture_python_frames(void)
{
	gadget_pid pid = bpf_get_current_pid_tgid() >> 32;
	const struct python_layout *layout;
	struct python_thread_search *search;
	struct python_search_step step;
	struct python_frame_walk walk;
	struct python_frames *stack;
	struct scratch_buffers *s;
	__u64 interp;

	s = bpf_map_lookup_elem(&scratch_space, &(__u32){ 0 });
	if (!s)
		return 0;
	stack = &s->python;
	stack->python_frame_count = 0;
	layout = bpf_map_lookup_elem(&python_processes, &pid);
	if (!layout)
		return 0;
	search = &s->python_search;
	search->found = 0;
	search->tid = current_ns_tid();
	search->state =
		read_user_word(layout->runtime + layout->tstate_current);
	if (!search->state ||
	    read_user_word(search->state + layout->native_thread_id) !=
		    search->tid) {
		interp = read_user_word(layout->runtime +
					layout->interpreters_head);
		search->state =
			interp ? read_user_word(interp + layout->threads_head) :
				 0;
		step.layout = layout;
		step.search = search;
		bpf_loop(MAX_PYTHON_THREADS, python_thread_is_current, &step,
			 0);
		if (!search->found)
			return 0;
	}
	walk.layout = layout;
	walk.s = s;
	walk.pid = pid;
	walk.frame =
		read_user_word(read_user_word(search->state + layout->cframe) +
			       layout->current_frame);
	bpf_loop(MAX_PYTHON_FRAMES, python_frame_step, &walk, 0);
	return 0;
}

/* A new site id, unique without atomics: CPU number above a per-CPU count.
 * 0 means "no stack". */
static __always_inline __u64 new_site_id(void)
{
	__u64 *count = bpf_map_lookup_elem(&site_counter, &(__u32){ 0 });

	if (!count)
		return 0;
	*count += 1;
	return ((__u64)bpf_get_smp_processor_id() << SITE_CPU_SHIFT) | *count;
}

/*
 * Capture the user stack of the current acquisition under a new site id.
 * At a function-entry probe the first frame is the lock function itself and
 * frame-pointer unwinding skips its caller, so the caller is put in its place.
 * The files the frames point into are left in scratch space for
 * send_stack_files: called from here, its frame would sit on this one.
 */
static __noinline __u64 capture_stack(struct pt_regs *ctx, bool at_entry,
				      bool with_python)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct vma_lookup lookup;
	struct stack_key key;
	struct scratch_buffers *s;
	long bytes;
	__u32 n;

	s = bpf_map_lookup_elem(&scratch_space, &(__u32){ 0 });
	if (!s)
		return 0;
	bytes = bpf_get_stack(ctx, s->raw_frames, sizeof(s->raw_frames),
			      BPF_F_USER_STACK);
	if (bytes < 0)
		bytes = 0;
	n = bytes / sizeof(__u64);
	if (at_entry) {
		s->raw_frames[0] = caller_address(ctx);
		if (n == 0)
			n = 1;
	}
	if (n > MAX_STACK_FRAMES)
		n = MAX_STACK_FRAMES;

	__builtin_memset(&s->stack, 0, sizeof(s->stack));
	s->stack.stack_pid = bpf_get_current_pid_tgid() >> 32;
	s->stack.frame_count = n;
	for (__u32 i = 0; i < MAX_STACK_FRAMES; i++) {
		if (i >= n)
			break;
		lookup.address = s->raw_frames[i];
		lookup.offset = lookup.address;
		lookup.file_id = 0;
		lookup.file = NULL;
		bpf_find_vma(task, lookup.address, resolve_vma, &lookup, 0);
		s->stack.frame_offsets[i] = lookup.offset;
		s->stack.frame_files[i] = lookup.file_id;
		s->stack.frame_addresses[i] = lookup.address;
		s->frame_file_pointers[i] = (__u64)lookup.file;
	}

	if (with_python)
		s->stack.python = s->python;
	key.site = new_site_id();
	if (!key.site)
		return 0;
	if (bpf_map_update_elem(&stackmap, &key, &s->stack, BPF_NOEXIST)) {
		count_stat(STAT_SITES_FULL);
		return 0;
	}
	return key.site;
}

/* Send the paths of the files the stack just captured points into. */
static __always_inline void send_stack_files(void)
{
	struct scratch_buffers *s =
		bpf_map_lookup_elem(&scratch_space, &(__u32){ 0 });
	__u32 n;

	if (!s)
		return;
	n = s->stack.frame_count;
	for (__u32 i = 0; i < MAX_STACK_FRAMES; i++) {
		if (i >= n)
			break;
		if (s->frame_file_pointers[i])
			send_file_path(s->stack.frame_files[i],
				       s->frame_file_pointers[i]);
	}
}

/* The user stack of the current acquisition under a new site id (0 if none),
 * its files' paths sent. */
static __always_inline __u64 capture_site(struct pt_regs *ctx, bool at_entry)
{
	__u64 site;

	/* before the stack, not from inside it: their frames never add up */
	capture_python_frames();
	site = capture_stack(ctx, at_entry, true);

	if (site)
		send_stack_files();
	return site;
}

/* ------------------------------------------------------------------------
 * 10. Lock-order edges
 * A dependency (thread, held set, requested lock) is looked up in the thread's
 * dependency cache (one set per nesting depth), then in known_dependencies;
 * only a new one captures a stack and writes edges.
 * ------------------------------------------------------------------------ */

struct dep_key {
	__u64 context; /* held_hash of the requesting thread */
	__u64 lock;
	__u32 pid;
	__u32 tid;
	__u32 gen;
	__u8 mode;
	__u8 how;
	__u8 __pad[2];
};

/* dependency (thread, held set, requested lock) -> its stackmap key */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_KNOWN_DEPS);
	__type(key, struct dep_key);
	__type(value, __u64);
} known_dependencies SEC(".maps");

/* (held lock, requested lock, thread, context) -> edge evidence */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_EDGES);
	__type(key, struct lock_edge_key);
	__type(value, struct lock_edge);
} edges SEC(".maps");

/* Record one edge per held lock into the requested one (the key and the
 * edge are in scratch space; bpf_loop hands the callback this, on the stack). */
struct edge_walk {
	struct thread_locks *t;
	struct lock_edge *edge;
	struct lock_edge_key *key;
};

/* One edge of record_edges, from held[i] (a bpf_loop callback: the verifier
 * checks it once, not once per held lock). */
static long record_edge_from(__u64 i, void *ctx)
{
	struct edge_walk *walk = ctx;
	struct thread_locks *t = walk->t;
	struct lock_edge *edge = walk->edge;
	struct held_lock *held;

	if (i >= t->nheld)
		return 1;
	held = &t->held[held_index(i)];
	walk->key->from_lock = held->lock;
	edge->from_gen = held->gen;
	edge->from_site = held->site;
	edge->from_mode = held->mode;
	edge->from_kind = held->kind;
	if (bpf_map_update_elem(&edges, walk->key, edge, BPF_ANY))
		count_stat(STAT_EDGES_FULL);
	return 0;
}

static __always_inline void record_edges(struct thread_locks *t, __u64 lock,
					 __u32 gen, __u8 mode, __u8 kind,
					 __u8 how, __u64 site)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct edge_walk walk;
	struct lock_edge_key *key;
	struct lock_edge *edge;
	struct scratch_buffers *s;

	s = bpf_map_lookup_elem(&scratch_space, &(__u32){ 0 });
	if (!s)
		return;
	edge = &s->edge;
	key = &s->edge_key;
	__builtin_memset(edge, 0, sizeof(*edge));
	edge->mntns_id = gadget_get_current_mntns_id();
	edge->process_start = current_process_start();
	edge->session_id = current_session_id();
	edge->to_site = site;
	edge->to_gen = gen;
	edge->to_kind = kind;
	bpf_get_current_comm(edge->comm, sizeof(edge->comm));
	edge->held_count = copy_held_set(t, edge->held_locks, edge->held_gens,
					 edge->held_modes, 0);

	__builtin_memset(key, 0, sizeof(*key));
	key->to_lock = lock;
	key->context = t->held_hash;
	key->pid = pid_tgid >> 32;
	key->tid = (__u32)pid_tgid;
	key->to_mode = mode;
	key->to_how = how;
	walk.t = t;
	walk.edge = edge;
	walk.key = key;
	bpf_loop(MAX_HELD_LOCKS, record_edge_from, &walk, 0);
}

/* Drop the cached dependencies if some lock was destroyed since they were
 * cached: generations may have changed. */
static __always_inline void check_cache_epoch(struct thread_locks *t)
{
	__u32 epoch = destroy_epoch;

	if (t->epoch == epoch)
		return;
	for (int i = 0; i < DEP_CACHE_ENTRIES; i++)
		t->cache[i].valid = 0;
	t->epoch = epoch;
}

/* An index into cache[] the verifier can see is in bounds: the mask is there
 * for verifiers (Linux 6.1's) that lose the bounds of an index built with
 * shifts and ors; the barrier keeps the compiler from dropping it. */
static __always_inline __u32 cache_index(__u32 index)
{
	barrier_var(index);
	return index & (DEP_CACHE_ENTRIES - 1);
}

/* The dependency-cache set for requests at this nesting depth. Sets by depth:
 * a nested path of up to DEP_CACHE_SETS locks never evicts its own entries
 * (hashing into 8 entries, 4 requests collided 59% of the time), and each depth
 * keeps DEP_CACHE_WAYS different requests. */
static __always_inline __u32 cache_set(__u32 depth)
{
	return depth & (DEP_CACHE_SETS - 1);
}

/* The cached dependency "request `lock` while holding the current set", if
 * this thread made it before. A hit also proves the lock is not held now:
 * only requests for a lock not held are cached, under the set's hash. */
static __always_inline struct dep_cache_entry *
cached_dependency(struct thread_locks *t, __u64 lock, __u8 mode, __u8 how)
{
	__u32 first = cache_set(t->nheld) * DEP_CACHE_WAYS;
	struct dep_cache_entry *entry;

	for (int way = 0; way < DEP_CACHE_WAYS; way++) {
		entry = &t->cache[cache_index(first + way)];
		if (entry->valid && entry->lock == lock &&
		    entry->context == t->held_hash && entry->mode == mode &&
		    entry->how == how)
			return entry;
	}
	return NULL;
}

/* The entry of this depth's set a new dependency replaces (round robin). */
static __always_inline struct dep_cache_entry *
cache_victim(struct thread_locks *t)
{
	__u32 set = cache_set(t->nheld);
	__u32 way = t->cache_victim[set] % DEP_CACHE_WAYS;

	t->cache_victim[set] = (way + 1) % DEP_CACHE_WAYS;
	return &t->cache[cache_index(set * DEP_CACHE_WAYS + way)];
}

/*
 * A request this thread's cache does not know: find the dependency in the
 * known set or record it (site and edges), then cache it. Returns the
 * acquisition site to remember for the lock.
 */
static __always_inline __u64 learn_dependency(struct pt_regs *ctx,
					      struct thread_locks *t,
					      __u64 lock, __u8 mode, __u8 kind,
					      __u8 how, __u32 *gen_out)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct dep_cache_entry *entry;
	struct dep_key key = {};
	__u64 *known, site;

	key.context = t->held_hash;
	key.lock = lock;
	key.pid = pid_tgid >> 32;
	key.tid = (__u32)pid_tgid;
	key.gen = lock_generation(key.pid, lock);
	key.mode = mode;
	key.how = how;
	known = bpf_map_lookup_elem(&known_dependencies, &key);
	if (known) {
		site = *known;
	} else {
		site = capture_site(ctx, true);
		if (how != ACQUIRE_TRY)
			record_edges(t, lock, key.gen, mode, kind, how, site);
		bpf_map_update_elem(&known_dependencies, &key, &site, BPF_ANY);
	}
	*gen_out = key.gen;
	entry = cache_victim(t);
	entry->lock = lock;
	entry->context = t->held_hash;
	entry->gen = key.gen;
	entry->site = site;
	entry->mode = mode;
	entry->how = how;
	entry->valid = 1;
	return site;
}

/* ------------------------------------------------------------------------
 * 11. Acquire and release
 * ------------------------------------------------------------------------ */

static __always_inline void push_held(struct thread_locks *t, __u64 lock,
				      __u32 gen, __u64 site, __u8 mode,
				      __u8 kind)
{
	__u32 n = t->nheld;
	struct held_lock *held;

	if (n >= MAX_HELD_LOCKS) {
		count_stat(STAT_HELD_OVERFLOW);
		return;
	}
	held = &t->held[held_index(n)];

	held->lock = lock;
	held->gen = gen;
	held->site = site;
	held->depth = 1;
	held->mode = mode;
	held->kind = kind;
	t->nheld = n + 1;
	t->held_hash ^= held_lock_hash(lock, gen, mode);
}

/* Where the C libraries keep a lock's owner and type (x86-64 and aarch64). */
/* glibc: struct __pthread_mutex_s.__owner, .__kind, and
 * struct __pthread_rwlock_arch_t.__cur_writer */
#define GLIBC_MUTEX_OWNER_OFFSET 8
#define GLIBC_MUTEX_KIND_OFFSET 16
#define GLIBC_RWLOCK_WRITER_OFFSET 24
/* musl: _m_type (__u.__i[0]) and _m_lock (__u.__vi[1]), which holds the
 * owner's tid unless the type is normal */
#define MUSL_MUTEX_TYPE_OFFSET 0
#define MUSL_MUTEX_LOCK_OFFSET 4
/* musl: a semaphore's value without its waiters bit (glibc: all 32 bits) */
#define SEMAPHORE_VALUE_MAX 0x7fffffff
/* the type bits of both: glibc's PTHREAD_MUTEX_KIND_MASK_NP; 1 is recursive */
#define MUTEX_TYPE_MASK 3
#define MUTEX_TYPE_RECURSIVE 1
/* musl: a normal mutex (type 0) keeps no owner */
#define MUSL_MUTEX_TYPE_BITS 15
/* an owner word without its waiter and owner-died bits */
#define OWNER_TID_MASK 0x3fffffff
/* signal_struct.flags: the whole process is exiting */
#define SIGNAL_GROUP_EXIT 0x00000004

/* Take held[i] out of the thread's held set (its last level of recursion). */
static __always_inline void drop_held(struct thread_locks *t, int i)
{
	struct held_lock *held = &t->held[held_index(i)];
	__u32 last;

	t->held_hash ^= held_lock_hash(held->lock, held->gen, held->mode);
	/* keep the set dense: move the last lock into the freed place */
	last = t->nheld - 1;
	if (last != i)
		*held = t->held[held_index(last)];
	t->nheld = last;
}

/* Whether the C library tells the thread's hold of a lock of this kind: a
 * glibc mutex records its owner's thread id while locked and 0 otherwise, so
 * neither its unlock nor the return of a try or timed lock needs a probe. */
static __always_inline bool owner_tracked(struct thread_locks *t, __u8 kind)
{
	return kind == LOCK_KIND_MUTEX && t->libc == LIBC_GLIBC;
}

/* The owner musl records in a lock: only recursive and error-checking
 * mutexes keep one (a normal mutex holds a busy flag, an rwlock a count). */
static __always_inline __u32 musl_lock_owner(__u64 lock, __u8 kind)
{
	__u32 type = 0, word = 0;

	if (kind != LOCK_KIND_MUTEX)
		return 0;
	bpf_probe_read_user(&type, sizeof(type),
			    (void *)(lock + MUSL_MUTEX_TYPE_OFFSET));
	if (!(type & MUSL_MUTEX_TYPE_BITS))
		return 0;
	bpf_probe_read_user(&word, sizeof(word),
			    (void *)(lock + MUSL_MUTEX_LOCK_OFFSET));
	return word & OWNER_TID_MASK;
}

/* The owner the C library records in the lock itself (0 if none or unknown). */
static __always_inline __u32 lock_owner(__u64 lock, __u8 kind, __u8 libc)
{
	__u32 owner = 0;

	if (libc == LIBC_MUSL)
		return musl_lock_owner(lock, kind);
	if (kind == LOCK_KIND_MUTEX)
		bpf_probe_read_user(&owner, sizeof(owner),
				    (void *)(lock + GLIBC_MUTEX_OWNER_OFFSET));
	else if (kind == LOCK_KIND_RWLOCK)
		bpf_probe_read_user(
			&owner, sizeof(owner),
			(void *)(lock + GLIBC_RWLOCK_WRITER_OFFSET));
	return owner;
}

/*
 * Whether the thread let go of a held lock without a probe seeing it: a glibc
 * mutex, whose unlock takes no probe (one probe hit per lock/unlock pair, not
 * two), records its owner's thread id while locked and 0 once unlocked. Other
 * locks leave by their unlock probe (rwlocks keep no owner for readers, musl's
 * normal mutexes none at all, spinlocks none).
 */
static __always_inline bool released_unseen(struct thread_locks *t,
					    struct held_lock *held)
{
	return owner_tracked(t, held->kind) &&
	       (lock_owner(held->lock, held->kind, t->libc) & OWNER_TID_MASK) !=
		       t->ns_tid;
}

struct release_walk {
	struct thread_locks *t;
	__u64 waited;
	__u32 top;
};

/* One step of forget_released (a bpf_loop callback: the verifier checks it
 * once, not once per held lock). */
static long forget_if_released(__u64 k, void *ctx)
{
	struct release_walk *walk = ctx;
	struct thread_locks *t = walk->t;
	int i = (int)walk->top - 1 - (int)k;
	struct held_lock *held;

	if (i < 0 || i >= t->nheld)
		return 1;
	held = &t->held[held_index(i)];
	if (held->lock != walk->waited && released_unseen(t, held))
		drop_held(t, i);
	return 0;
}

/* Bring the held set up to date before it is used (a request, a wait, an
 * exit): drop the locks released unseen, except `waited`, a blocking lock
 * pushed at entry and not taken yet. From the top down: drop_held moves the
 * last entry, already checked, into the freed place. */
static __always_inline void forget_released(struct thread_locks *t,
					    __u64 waited)
{
	struct release_walk walk = { t, waited, t->nheld };

	if (t->libc != LIBC_GLIBC || !walk.top)
		return;
	bpf_loop(MAX_HELD_LOCKS, forget_if_released, &walk, 0);
}

/* The thread (as the kernel numbers it) that a lock owner recorded by the C
 * library of process `pid` is: owners are recorded as the process sees its
 * threads. `tid` and `ns_tid` name the asking thread both ways. 0 if none or
 * not a thread we know in a pid namespace. */
static __always_inline gadget_tid owner_thread(gadget_pid pid, gadget_tid tid,
					       __u32 ns_tid, __u32 owner)
{
	struct ns_thread_key key = { pid, owner };
	gadget_tid *found;

	if (!owner || ns_tid == tid)
		return owner; /* no pid namespace of its own */
	found = bpf_map_lookup_elem(&ns_threads, &key);
	return found ? *found : 0;
}

struct misuse_event {
	gadget_mntns_id mntns_id;
	__u64 process_start;
	__u64 lock;
	__u64 site; /* stack key of where it happened, 0 if none */
	__u64 held_site; /* stack key of where the lock was taken, 0 if unknown */
	gadget_pid pid;
	gadget_tid tid;
	__u32 gen;
	__u32 owner_tid; /* the thread holding the lock (unlock-not-owner), 0 if unknown */
	__u8 misuse; /* enum misuse */
	__u8 kind;
	__u8 mode; /* how the lock was requested (relock), held otherwise */
	__u8 held_mode; /* how the thread holds it (relock) */
	__u32 __pad;
	gadget_comm comm[TASK_COMM_LEN];
};

GADGET_TRACER_MAP(misuse_events, 1024 * 64);

/* Tell user space about a misuse of a lock by the current thread. */
static __always_inline void send_misuse(void *ctx, __u8 misuse, __u64 lock,
					__u32 gen, __u8 kind, __u8 mode,
					__u8 held_mode, __u64 site,
					__u64 held_site, __u32 owner)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct misuse_event *event;

	event = gadget_reserve_buf(&misuse_events, sizeof(*event));
	if (!event)
		return;
	__builtin_memset(event, 0, sizeof(*event));
	event->mntns_id = gadget_get_current_mntns_id();
	event->process_start = current_process_start();
	event->lock = lock;
	event->site = site;
	event->held_site = held_site;
	event->pid = pid_tgid >> 32;
	event->tid = (__u32)pid_tgid;
	event->gen = gen;
	event->owner_tid = owner;
	event->misuse = misuse;
	event->kind = kind;
	event->mode = mode;
	event->held_mode = held_mode;
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	gadget_submit_buf(ctx, &misuse_events, event, sizeof(*event));
}

/* Locks any thread may release (semaphores): who took them, so that a release
 * by another thread takes them from the thread that holds them. */
/* (process, lock) -> the thread that holds it */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_HOLDERS);
	__type(key, struct lock_id);
	__type(value, gadget_tid);
} lock_holders SEC(".maps");

/* (process, semaphore) -> 1: it counts beyond 1, or was released by a thread
 * that did not take it (a signal), so it is no lock until it is destroyed */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_COUNTING_SEMAPHORES);
	__type(key, struct lock_id);
	__type(value, __u8);
} counting_semaphores SEC(".maps");

static __always_inline struct lock_id current_lock_id(__u64 lock)
{
	struct lock_id id = { .lock = lock,
			      .pid = bpf_get_current_pid_tgid() >> 32 };

	return id;
}

static __always_inline void note_holder(struct thread_locks *t, __u64 lock)
{
	struct lock_id id = current_lock_id(lock);

	bpf_map_update_elem(&lock_holders, &id, &t->owner, BPF_ANY);
}

static __always_inline void forget_holder(__u64 lock)
{
	struct lock_id id = current_lock_id(lock);

	bpf_map_delete_elem(&lock_holders, &id);
}

/* The value of a semaphore (glibc: the low 32 bits of its first word; musl:
 * its first int without the waiters bit). */
static __always_inline __u32 semaphore_value(__u64 sem, __u8 libc)
{
	__u32 value = 0;

	bpf_probe_read_user(&value, sizeof(value), (void *)sem);
	return libc == LIBC_MUSL ? value & SEMAPHORE_VALUE_MAX : value;
}

/* Whether a lock any thread may release turned out to be no lock (it counts
 * beyond 1, or it was released by a thread that did not take it). */
static __always_inline bool counts_beyond_one(__u64 sem)
{
	struct lock_id id = current_lock_id(sem);

	return bpf_map_lookup_elem(&counting_semaphores, &id);
}

/* At a post: whether the semaphore counts beyond 1 (a lock's value is 0
 * while it is held, so a post finds 0); one that does is forgotten. */
static __always_inline bool semaphore_counts(__u64 sem, __u8 libc)
{
	struct lock_id id = current_lock_id(sem);

	if (counts_beyond_one(sem))
		return true;
	if (semaphore_value(sem, libc) == 0)
		return false;
	bpf_map_update_elem(&counting_semaphores, &id, &(__u8){ 1 }, BPF_ANY);
	return true;
}

/* Whether the thread may take a lock it holds once more: a recursive mutex
 * or lock function, or a read lock on a rwlock it holds for reading. */
static __always_inline bool reentry_allowed(struct thread_locks *t, __u64 lock,
					    __u8 kind, __u8 held_mode,
					    __u8 mode, __u8 flags)
{
	__u64 offset = t->libc == LIBC_MUSL ? MUSL_MUTEX_TYPE_OFFSET :
					      GLIBC_MUTEX_KIND_OFFSET;
	int type = 0;

	if (flags & LOCK_FLAG_RECURSIVE)
		return true;
	if (kind == LOCK_KIND_RWLOCK)
		return mode == LOCK_MODE_SHARED &&
		       held_mode == LOCK_MODE_SHARED;
	if (kind != LOCK_KIND_MUTEX)
		return false;
	bpf_probe_read_user(&type, sizeof(type), (void *)(lock + offset));
	return (type & MUTEX_TYPE_MASK) == MUTEX_TYPE_RECURSIVE;
}

/* Remember the acquisition a futex wait may belong to. */
static __always_inline void note_wait(struct thread_locks *t, __u64 lock,
				      __u32 gen, __u64 site, __u8 mode,
				      __u8 kind, __u8 how, __u8 flags)
{
	t->wait.lock = lock;
	t->wait.site = site;
	t->wait.since = 0;
	t->wait.gen = gen;
	t->wait.mode = mode;
	t->wait.kind = kind;
	t->wait.how = how;
	t->wait.waiting = 0;
	t->wait.flags = flags;
}

/*
 * musl's lock functions call each other with the same lock (lock calls
 * timedlock, which calls trylock): such a call is part of the outer
 * acquisition, not one of the program's own. A plain nested call returns into
 * the code of a lock function this thread entered (each entry's code range is
 * kept; the probe's cookie holds the function's size); a tail call enters the
 * next function with the stack of the previous entry, for the same lock. The
 * program's own calls return into its own code, from frames of their own.
 */
static __always_inline bool nested_lock_call(struct pt_regs *ctx,
					     struct thread_locks *t, __u64 lock)
{
	__u64 caller = caller_address(ctx), start = PT_REGS_IP(ctx),
	      sp = PT_REGS_SP(ctx);
	struct code_range *range;
	bool nested = sp == t->last_call.sp && lock == t->last_call.lock &&
		      start != t->last_call.start;

	for (int i = 0; i < LOCK_CALL_RANGES; i++) {
		range = &t->lock_calls[i];
		if (caller - range->start < range->end - range->start)
			nested = true;
	}
	range = &t->lock_calls[t->next_lock_call++ & (LOCK_CALL_RANGES - 1)];
	range->start = start;
	range->end = start + (bpf_get_attach_cookie(ctx) >> COOKIE_SIZE_SHIFT);
	t->last_call.sp = sp;
	t->last_call.lock = lock;
	t->last_call.start = start;
	return nested;
}

/* A lock function entered for a lock the thread holds (held[i]): no self
 * edge; a blocking acquisition counts the depth, a try or timed one does if
 * it succeeds. */
static __always_inline int lock_reacquired(struct pt_regs *ctx,
					   struct thread_locks *t, int i,
					   __u64 lock, __u8 mode, __u8 kind,
					   __u8 how, __u8 flags)
{
	struct held_lock *held = &t->held[held_index(i)];
	__u64 site;

	if (flags & LOCK_FLAG_ANY_RELEASER) {
		/* taken again by the thread that holds it: it waits for another
		 * thread to release it (a semaphore used as a signal); held again
		 * if its return says it got it */
		if (how != ACQUIRE_TRY)
			note_wait(t, lock, held->gen, held->site, mode, kind,
				  how, flags);
		t->pending.lock = lock;
		t->pending.sp = PT_REGS_SP(ctx);
		t->pending.gen = held->gen;
		t->pending.site = held->site;
		t->pending.mode = mode;
		t->pending.kind = kind;
		t->pending.flags = flags;
		t->pending.recursive = 0;
		t->pending.active = 1;
		return 0;
	}
	if (!reentry_allowed(t, lock, kind, held->mode, mode, flags)) {
		/* a try just fails; anything else hangs or fails with EDEADLK,
		 * and holds nothing more */
		if (how == ACQUIRE_TRY)
			return 0;
		site = capture_site(ctx, true);
		send_misuse(ctx, MISUSE_RELOCK_HELD, lock, held->gen, kind,
			    mode, held->mode, site, held->site, 0);
		note_wait(t, lock, held->gen, site, mode, kind, how, flags);
		return 0;
	}
	if (how != ACQUIRE_TRY)
		note_wait(t, lock, held->gen, held->site, mode, kind, how,
			  flags);
	if (how == ACQUIRE_BLOCKING || owner_tracked(t, kind)) {
		held->depth++;
		return 0;
	}
	t->pending.lock = lock;
	t->pending.sp = PT_REGS_SP(ctx);
	t->pending.recursive = 1;
	t->pending.active = 1;
	return 0;
}

/* How a request orders locks: a try that stands for a blocking acquisition
 * (LOCK_FLAG_WAIT_INTENT) orders them as one. */
static __always_inline __u8 ordered_how(__u8 how, __u8 flags)
{
	return (flags & LOCK_FLAG_WAIT_INTENT) ? ACQUIRE_BLOCKING : how;
}

/* Entry of a lock function. */
static __always_inline int lock_requested(struct pt_regs *ctx, __u64 lock,
					  __u8 mode, __u8 kind, __u8 how,
					  __u8 flags)
{
	gadget_tid tid = current_tid();
	struct dep_cache_entry *cached;
	struct thread_locks *t;
	__u64 site;
	__u32 gen = 0;
	int i;

	if (!lock ||
	    ((flags & LOCK_FLAG_ANY_RELEASER) && counts_beyond_one(lock)))
		return 0;
	t = thread_state(tid, ctx);
	if (!t)
		return 0;
	if (t->libc == LIBC_MUSL && nested_lock_call(ctx, t, lock))
		return 0;
	forget_released(t, 0);

	check_cache_epoch(t);
	cached = cached_dependency(t, lock, mode, ordered_how(how, flags));
	if (cached) {
		/* the common case: a known request, and the lock is not held */
		gen = cached->gen;
		site = cached->site;
	} else {
		i = find_held(t, lock);
		if (i >= 0)
			return lock_reacquired(ctx, t, i, lock, mode, kind, how,
					       flags);
		site = learn_dependency(ctx, t, lock, mode, kind,
					ordered_how(how, flags), &gen);
	}
	if (how != ACQUIRE_TRY)
		note_wait(t, lock, gen, site, mode, kind, how, flags);
	/* a glibc mutex is held from here whatever the outcome: a try or timed
	 * acquisition that fails leaves the owner field to another thread, and
	 * forget_released drops the lock at the thread's next step */
	if (how == ACQUIRE_BLOCKING || owner_tracked(t, kind)) {
		push_held(t, lock, gen, site, mode, kind);
		if (flags & LOCK_FLAG_ANY_RELEASER)
			note_holder(t, lock);
		return 0;
	}
	/* elsewhere try and timed acquisitions hold the lock only if they succeed
	 * (their return probe tells) */
	t->pending.lock = lock;
	t->pending.sp = PT_REGS_SP(ctx);
	t->pending.gen = gen;
	t->pending.site = site;
	t->pending.mode = mode;
	t->pending.kind = kind;
	t->pending.flags = flags;
	t->pending.recursive = 0;
	t->pending.active = 1;
	return 0;
}

/*
 * Every lock request runs lock_requested, a large function. Inlined into each
 * entry program it was verified once per probed function (15 of them) each
 * time the gadget loads, which took seconds. The entry programs other than
 * pthread_mutex_lock's (the most frequent: it keeps the direct path) write
 * the request down and tail-call one program that holds lock_requested; the
 * registers, the attach cookie and the stack are still the probed call's.
 */
struct lock_request {
	__u64 lock;
	gadget_tid tid; /* who asked: the hand-over is checked */
	__u8 mode;
	__u8 kind;
	__u8 how;
	__u8 flags; /* LOCK_FLAG_* */
};

/* 0 -> the request this CPU's entry program hands over */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lock_request);
} lock_requests SEC(".maps");

int trace_lock_request(struct pt_regs *ctx);

/* 0 -> trace_lock_request (filled in by the loader) */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, int(struct pt_regs *));
} lock_request_program SEC(".maps") = {
	.values = { [0] = (void *)&trace_lock_request },
};

static __always_inline int hand_over_request(struct pt_regs *ctx, __u64 lock,
					     __u8 mode, __u8 kind, __u8 how,
					     __u8 flags)
{
	struct lock_request *request =
		bpf_map_lookup_elem(&lock_requests, &(__u32){ 0 });

	if (!request || !lock)
		return 0;
	request->lock = lock;
	request->tid = current_tid();
	request->mode = mode;
	request->kind = kind;
	request->how = how;
	request->flags = flags;
	bpf_tail_call(ctx, &lock_request_program, 0);
	count_stat(STAT_REQUEST_LOST); /* the program array was emptied */
	return 0;
}

/* The request handed over by this thread's entry program just now. (Another
 * thread's, if it ran on this CPU in between: then the request is dropped and
 * counted, never attributed to the wrong thread.) */
static __always_inline int take_over_request(struct pt_regs *ctx)
{
	struct lock_request *request =
		bpf_map_lookup_elem(&lock_requests, &(__u32){ 0 });

	if (!request)
		return 0;
	if (request->tid != current_tid()) {
		count_stat(STAT_REQUEST_LOST);
		return 0;
	}
	return lock_requested(ctx, request->lock, request->mode, request->kind,
			      request->how, request->flags);
}

/* How a try or timed lock function's result tells that it acquired (the
 * rule is in the probe's cookie; pthread's, 0, is "returns 0"). */
static __always_inline bool acquired(struct pt_regs *ctx)
{
	__u64 rule = (bpf_get_attach_cookie(ctx) >> COOKIE_RESULT_SHIFT) & 3;
	__u64 result = PT_REGS_RC(ctx);

	if (rule == ACQUIRED_TRUE)
		return (__u8)result != 0;
	if (rule == ACQUIRED_ONE)
		return (__u32)result == 1;
	return (__u32)result == 0;
}

/* Return of a try or timed lock function: 0 means acquired. */
static __always_inline int lock_returned(struct pt_regs *ctx)
{
	gadget_tid tid = current_tid();
	struct thread_locks *t;
	int i;

	t = thread_state(tid, NULL);
	if (!t)
		return 0;
	if (!t->pending.active ||
	    PT_REGS_SP(ctx) - RETURN_SP_OFFSET != t->pending.sp) {
		/* a blocking lock function that sleeps elsewhere than on its
		 * lock: its return ends the stretch in which a futex wait is a
		 * wait for the lock (and a nested call's return, which may end
		 * it early, only loses a blocked record) */
		if (t->wait.flags & LOCK_FLAG_WAITS_ELSEWHERE)
			t->wait.lock = 0;
		return 0; /* not the return of the pending call (a nested one's) */
	}
	t->pending.active = 0;
	t->wait.lock = 0;
	if (!acquired(ctx))
		return 0;
	if (t->pending.recursive) {
		i = find_held(t, t->pending.lock);
		if (i >= 0)
			t->held[held_index(i)].depth++;
		return 0;
	}
	if (t->pending.flags & LOCK_FLAG_ANY_RELEASER) {
		/* still held: the release that let it be taken again was missed;
		 * or it turned out to be no lock (a signal) meanwhile */
		if (find_held(t, t->pending.lock) >= 0 ||
		    counts_beyond_one(t->pending.lock))
			return 0;
		note_holder(t, t->pending.lock);
	}
	push_held(t, t->pending.lock, t->pending.gen, t->pending.site,
		  t->pending.mode, t->pending.kind);
	return 0;
}

/* Another thread unlocked a lock `owner` holds: it holds it no more. */
static __always_inline void released_by_other(gadget_tid owner, __u64 lock)
{
	struct thread_locks *t;
	__u32 *slot, index;
	int i;

	slot = bpf_map_lookup_elem(&thread_to_held_mutexes, &owner);
	if (!slot)
		return;
	index = *slot;
	t = bpf_map_lookup_elem(&thread_slots, &index);
	if (!t || t->owner != owner)
		return;
	i = find_held(t, lock);
	if (i >= 0)
		drop_held(t, i);
}

/* A lock any thread may release, released by one that does not hold it: it
 * leaves the thread that took it. */
static __always_inline void released_by_any(__u64 lock)
{
	struct lock_id id = current_lock_id(lock);
	gadget_tid *holder = bpf_map_lookup_elem(&lock_holders, &id);

	if (!holder)
		return;
	released_by_other(*holder, lock);
	bpf_map_delete_elem(&lock_holders, &id);
	/* released by a thread that did not take it: a signal (CPython's
	 * Condition wakes a waiter so), no lock, until it is destroyed */
	bpf_map_update_elem(&counting_semaphores, &id, &(__u8){ 1 }, BPF_ANY);
}

/* An unlock of a lock the current thread does not hold: if the C library
 * records another thread as its owner, that is a misuse (unlock-not-owner),
 * and the owner holds it no more. Threads that never took a lock we saw have
 * no state, and are checked all the same. */
static __always_inline void unlocked_unheld(void *ctx, __u64 lock, __u8 kind,
					    __u8 libc, __u32 ns_tid)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 owner = lock_owner(lock, kind, libc) & OWNER_TID_MASK;

	if (!owner || owner == ns_tid)
		return;
	owner = owner_thread(pid_tgid >> 32, (__u32)pid_tgid, ns_tid, owner);
	send_misuse(ctx, MISUSE_UNLOCK_NOT_OWNER, lock,
		    lock_generation(pid_tgid >> 32, lock), kind,
		    LOCK_MODE_EXCLUSIVE, LOCK_MODE_EXCLUSIVE,
		    capture_site(ctx, true), 0, owner);
	released_by_other(owner, lock);
}

/* Entry of an unlock function. A lock it does not know was taken before
 * tracing started, or by another thread (a misuse), or it is
 * pthread_spin_init, which shares pthread_spin_unlock's code. */
static __always_inline int lock_released(struct pt_regs *ctx, __u64 lock,
					 __u8 kind, __u8 flags)
{
	gadget_tid tid = current_tid();
	struct thread_locks *t;
	struct held_lock *held;
	int i;

	if (kind == LOCK_KIND_SEMAPHORE &&
	    semaphore_counts(lock, probed_libc(ctx))) {
		released_by_any(lock); /* it may have been taken as a lock */
		return 0;
	}
	t = thread_state(tid, NULL);
	if (!t) {
		if (flags & LOCK_FLAG_ANY_RELEASER)
			released_by_any(lock);
		else if (!current_is_filtered_out())
			unlocked_unheld(ctx, lock, kind, probed_libc(ctx),
					current_ns_tid());
		return 0;
	}
	t->wait.lock = 0;
	i = find_held(t, lock);
	if (i < 0) {
		if (flags & LOCK_FLAG_ANY_RELEASER)
			released_by_any(lock);
		else
			unlocked_unheld(ctx, lock, kind, t->libc, t->ns_tid);
		return 0;
	}
	held = &t->held[held_index(i)];
	if (held->depth > 1) {
		held->depth--;
		return 0;
	}
	drop_held(t, i);
	if (flags & LOCK_FLAG_ANY_RELEASER)
		forget_holder(lock);

	/* A thread that holds nothing and left the traced set (its container
	 * was unselected) has no state worth keeping. */
	if (t->nheld == 0 && current_is_filtered_out())
		release_thread(tid);
	return 0;
}

/* destroy: the address stops naming this lock; later use is a new lock. */
static __always_inline int lock_destroyed(__u64 lock)
{
	struct lock_id id = { .lock = lock,
			      .pid = bpf_get_current_pid_tgid() >> 32 };
	__u32 *gen, *generations, first = 1;

	/* a process that never took a lock we saw has no edge to tell apart */
	generations = bpf_map_lookup_elem(&lock_processes, &id.pid);
	if (!lock || !generations)
		return 0;
	/* what was known of the address as a lock any thread may release */
	bpf_map_delete_elem(&counting_semaphores, &id);
	bpf_map_delete_elem(&lock_holders, &id);
	gen = bpf_map_lookup_elem(&lock_generations, &id);
	if (gen)
		__sync_fetch_and_add(gen, 1);
	else if (bpf_map_update_elem(&lock_generations, &id, &first,
				     BPF_NOEXIST))
		count_stat(STAT_GENERATIONS_FULL);
	else
		__sync_fetch_and_add(generations, 1);
	__sync_fetch_and_add(&destroy_epoch, 1);
	return 0;
}

/* ------------------------------------------------------------------------
 * 12. Blocked threads
 * A tracked thread that starts a futex wait inside the lock it acquires is
 * blocked: user space builds the wait-for graph from these records, with the
 * owner the C library records in the lock.
 * ------------------------------------------------------------------------ */

/* What a futex wait tells about a lock. */
/* the command without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME */
#define FUTEX_CMD_MASK 0x7f
#define FUTEX_WAIT 0
#define FUTEX_LOCK_PI 6
#define FUTEX_WAIT_BITSET 9
#define FUTEX_LOCK_PI2 13
/* A wait on a futex word this close after a lock is a wait for that lock:
 * the futex words of glibc's and musl's mutexes are in their first 8 bytes,
 * of their rwlocks in the first 16. No further: a condition variable right
 * after its mutex is another object. */
#define MUTEX_FUTEX_SPAN 8
#define RWLOCK_FUTEX_SPAN 16

/* thread -> the lock it is blocked on; user space keeps it until "resumed" */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BLOCKED_THREADS);
	__type(key, struct blocked_key);
	__type(value, struct blocked_thread);
} blocked_threads SEC(".maps");

struct resumed_thread {
	gadget_pid pid;
	gadget_tid tid;
	__u64 lock;
};

GADGET_TRACER_MAP(resumed_threads, 1024 * 64);

/* thread -> the futex word it waits on, while a wait outside the lock
 * functions is recorded in blocked_threads */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BLOCKED_THREADS);
	__type(key, gadget_tid);
	__type(value, __u64);
} futex_waiters SEC(".maps");

static __always_inline bool is_futex_wait(__u64 op)
{
	op &= FUTEX_CMD_MASK;
	return op == FUTEX_WAIT || op == FUTEX_WAIT_BITSET ||
	       op == FUTEX_LOCK_PI || op == FUTEX_LOCK_PI2;
}

/* A wait that only a wake-up by another thread ends: no timeout (for these
 * two commands the fourth argument is the timeout). */
static __always_inline bool is_endless_plain_wait(__u64 op, __u64 timeout)
{
	op &= FUTEX_CMD_MASK;
	return !timeout && (op == FUTEX_WAIT || op == FUTEX_WAIT_BITSET);
}

/* Whether a futex wait is one for the lock the thread is acquiring. */
static __always_inline bool waits_for_lock(struct thread_locks *t, __u64 uaddr,
					   __u64 op)
{
	__u64 span = t->wait.kind == LOCK_KIND_RWLOCK ? RWLOCK_FUTEX_SPAN :
							MUTEX_FUTEX_SPAN;

	if (!t->wait.lock || !is_futex_wait(op))
		return false;
	/* a lock function that sleeps on a futex of its own (a per-thread
	 * one) waits for its lock in any futex wait until it returns */
	return uaddr - t->wait.lock < span ||
	       (t->wait.flags & LOCK_FLAG_WAITS_ELSEWHERE);
}

static __always_inline __u32 current_process_threads(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, signal, nr_threads);
}

/* Whether the thread still owns a lock of its held set, as far as the C
 * library tells: pthread_cond_wait releases and retakes its mutex inside
 * (glibc records an owner in every mutex, musl in some). */
static __always_inline bool still_owned(struct thread_locks *t,
					struct held_lock *held)
{
	__u32 owner;

	if (held->kind != LOCK_KIND_MUTEX)
		return true;
	owner = lock_owner(held->lock, held->kind, t->libc) & OWNER_TID_MASK;
	return owner == t->ns_tid || (!owner && t->libc == LIBC_MUSL);
}

struct owned_walk {
	struct thread_locks *t;
	struct blocked_thread *b;
	__u32 count;
};

/* One step of copy_owned_set (a bpf_loop callback: a loop that carries a
 * count costs the verifier a state per value). */
static long copy_if_owned(__u64 i, void *ctx)
{
	struct owned_walk *walk = ctx;
	struct thread_locks *t = walk->t;
	struct blocked_thread *b = walk->b;
	struct held_lock *held;
	__u32 at = walk->count;

	if (i >= t->nheld || at >= MAX_RECORDED_HELD)
		return 1;
	held = &t->held[held_index(i)];
	if (!still_owned(t, held))
		return 0;
	at &= MAX_RECORDED_HELD - 1;
	b->held_locks[at] = held->lock;
	b->held_gens[at] = held->gen;
	b->held_modes[at] = held->mode;
	walk->count++;
	return 0;
}

/* The first MAX_RECORDED_HELD locks the thread holds and still owns, into a
 * blocked record (a wait outside the lock functions). */
static __always_inline void copy_owned_set(struct thread_locks *t,
					   struct blocked_thread *b)
{
	struct owned_walk walk = { t, b, 0 };

	bpf_loop(MAX_HELD_LOCKS, copy_if_owned, &walk, 0);
	b->held_count = walk.count;
}

/* A futex wait outside every traced lock function: what locks does igdeadlock
 * not see? Counted per process and wait stack (the stack captured once), so
 * that a report names the code that waited (a Rust or Go mutex, InnoDB's
 * latches...) instead of saying "no deadlock" about locks it never saw. User
 * space tells the C library's own waits (condition variables, joins) apart. */

struct untraced_wait_key {
	gadget_pid pid;
	__u32 __pad;
	__u64 stack_hash; /* of the wait's innermost return addresses */
};

struct untraced_wait {
	gadget_mntns_id mntns_id;
	__u64 process_start;
	__u64 site; /* stackmap key of one wait there */
	__u64 count; /* waits since the last fetch */
	/* the word at the user stack pointer: the return address when the wait
	 * is made by a leaf function (the C library's syscall(), which Rust's
	 * std and others call for their futexes), which frame-pointer unwinding
	 * skips */
	__u64 caller;
	__u64 caller_file; /* file_id of the file `caller` points into, 0 if none */
	__u64 caller_offset; /* its offset there */
	gadget_comm comm[TASK_COMM_LEN];
};

#define UNTRACED_WAIT_FRAMES 4 /* return addresses that tell a wait site */
#define MIN_CODE_ADDRESS 4096 /* below it, a stack word is no code address */

/* (process, wait stack) -> waits there outside every traced lock function */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_UNTRACED_WAITS);
	__type(key, struct untraced_wait_key);
	__type(value, struct untraced_wait);
} untraced_waits SEC(".maps");

/* (process, wait stack) -> its site: the stack is captured once per process */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_UNTRACED_WAITS);
	__type(key, struct untraced_wait_key);
	__type(value, __u64);
} untraced_wait_sites SEC(".maps");

/* Which processes' other futex waits are recorded as blocked threads (for
 * all-threads-blocked): those with lock state, and, when the traced set is
 * chosen (a command's tree, containers), every process in it, whatever locks
 * it takes (a Rust or Go program takes none igdeadlock sees). */
static __always_inline bool in_hang_scope(gadget_pid pid)
{
	if (current_is_filtered_out())
		return false;
	return bpf_map_lookup_elem(&lock_processes, &pid) || tree_pid ||
	       gadget_filter_by_mntns;
}

/* Where an untraced wait's caller word points: (file, offset), its path sent. */
static __always_inline void resolve_caller(struct untraced_wait *wait)
{
	struct vma_lookup lookup = { .address = wait->caller,
				     .offset = wait->caller };

	if (wait->caller < MIN_CODE_ADDRESS)
		return;
	bpf_find_vma(bpf_get_current_task_btf(), wait->caller, resolve_vma,
		     &lookup, 0);
	wait->caller_file = lookup.file_id;
	wait->caller_offset = lookup.offset;
	if (lookup.file)
		send_file_path(lookup.file_id, (__u64)lookup.file);
}

static __always_inline void note_untraced_wait(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct untraced_wait_key key = { .pid = pid_tgid >> 32 };
	struct untraced_wait *known, fresh = { .count = 1 };
	struct scratch_buffers *s;
	__u64 *site;
	long bytes;

	if (current_is_filtered_out())
		return;
	s = bpf_map_lookup_elem(&scratch_space, &(__u32){ 0 });
	if (!s)
		return;
	bytes = bpf_get_stack(ctx, s->raw_frames,
			      UNTRACED_WAIT_FRAMES * sizeof(__u64),
			      BPF_F_USER_STACK);
	if (bytes <= 0)
		return;
	for (int i = 0; i < UNTRACED_WAIT_FRAMES; i++)
		if (i * sizeof(__u64) < bytes)
			key.stack_hash =
				mix64(key.stack_hash ^ s->raw_frames[i]);
	known = bpf_map_lookup_elem(&untraced_waits, &key);
	if (known) {
		__sync_fetch_and_add(&known->count, 1);
		return;
	}
	site = bpf_map_lookup_elem(&untraced_wait_sites, &key);
	fresh.site = site ? *site : capture_stack(ctx, false, false);
	if (!fresh.site)
		return;
	if (!site) {
		send_stack_files();
		bpf_map_update_elem(&untraced_wait_sites, &key, &fresh.site,
				    BPF_ANY);
	}
	fresh.mntns_id = gadget_get_current_mntns_id();
	fresh.process_start = current_process_start();
	bpf_probe_read_user(
		&fresh.caller, sizeof(fresh.caller),
		(void *)PT_REGS_SP_CORE((struct pt_regs *)bpf_task_pt_regs(
			bpf_get_current_task_btf())));
	resolve_caller(&fresh);
	bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
	bpf_map_update_elem(&untraced_waits, &key, &fresh, BPF_NOEXIST);
}

/* A thread of a process with lock state starts an endless futex wait that no
 * lock function explains (a condition variable, a join, a barrier): recorded
 * with its user stack, so that user space can tell when every thread of the
 * process waits. */
static __always_inline int other_wait_started(void *ctx, struct thread_locks *t,
					      __u64 uaddr)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct blocked_key key = { .tid = (__u32)pid_tgid };
	gadget_pid pid = pid_tgid >> 32;
	struct scratch_buffers *s;
	struct blocked_thread *b;
	long bytes;

	if (!in_hang_scope(pid))
		return 0;
	s = bpf_map_lookup_elem(&scratch_space, &(__u32){ 0 });
	if (!s)
		return 0;
	b = &s->blocked;
	__builtin_memset(b, 0, sizeof(*b));
	b->mntns_id = gadget_get_current_mntns_id();
	b->process_start = current_process_start();
	b->lock = uaddr;
	b->since = bpf_ktime_get_boot_ns();
	b->observed = b->since;
	b->pid = pid;
	b->session_id = current_session_id();
	b->kind = LOCK_KIND_FUTEX;
	b->how = ACQUIRE_BLOCKING;
	b->process_threads = current_process_threads();
	bpf_get_current_comm(b->comm, sizeof(b->comm));
	if (t)
		copy_owned_set(t, b);
	bytes = bpf_get_stack(ctx, b->wait_frames, sizeof(b->wait_frames),
			      BPF_F_USER_STACK);
	b->wait_frame_count = bytes > 0 ? bytes / sizeof(__u64) : 0;
	if (bpf_map_update_elem(&blocked_threads, &key, b, BPF_ANY)) {
		count_stat(STAT_BLOCKED_FULL);
		return 0;
	}
	bpf_map_update_elem(&futex_waiters, &key.tid, &uaddr, BPF_ANY);
	return 0;
}

/* A thread starts a futex wait: inside the lock it is acquiring (it is
 * blocked on the lock: user space builds the wait-for graph), or elsewhere. */
static __always_inline int futex_wait_started(void *ctx, __u64 uaddr, __u64 op,
					      __u64 timeout)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct blocked_key key = { .tid = (__u32)pid_tgid };
	__u64 waited = 0;
	struct thread_locks *t;
	struct blocked_thread *b;
	struct scratch_buffers *s;

	t = thread_state(key.tid, NULL);
	if (!t || !waits_for_lock(t, uaddr, op)) {
		if (is_futex_wait(op))
			note_untraced_wait(ctx);
		if (is_endless_plain_wait(op, timeout))
			return other_wait_started(ctx, t, uaddr);
		return 0;
	}
	s = bpf_map_lookup_elem(&scratch_space, &(__u32){ 0 });
	if (!s)
		return 0;
	if (!t->wait.since)
		t->wait.since = bpf_ktime_get_boot_ns();
	t->wait.waiting = 1;

	b = &s->blocked;
	__builtin_memset(b, 0, sizeof(*b));
	b->mntns_id = gadget_get_current_mntns_id();
	b->process_start = current_process_start();
	b->lock = t->wait.lock;
	b->site = t->wait.site;
	b->since = t->wait.since;
	b->observed = bpf_ktime_get_boot_ns();
	b->pid = pid_tgid >> 32;
	b->gen = t->wait.gen;
	b->owner_tid =
		owner_thread(t->pid, t->owner, t->ns_tid,
			     lock_owner(t->wait.lock, t->wait.kind, t->libc) &
				     OWNER_TID_MASK);
	b->session_id = current_session_id();
	b->mode = t->wait.mode;
	b->kind = t->wait.kind;
	b->how = t->wait.how;
	b->process_threads = current_process_threads();
	bpf_get_current_comm(b->comm, sizeof(b->comm));
	/* a blocking lock (and any glibc mutex) is pushed at entry: it is waited
	 * for, not held */
	if (t->wait.how == ACQUIRE_BLOCKING || owner_tracked(t, t->wait.kind))
		waited = t->wait.lock;
	forget_released(t, waited);
	b->held_count = copy_held_set(t, b->held_locks, b->held_gens,
				      b->held_modes, waited);
	if (bpf_map_update_elem(&blocked_threads, &key, b, BPF_ANY))
		count_stat(STAT_BLOCKED_FULL);
	return 0;
}

/* The futex wait ended. If user space already saw the thread blocked (the
 * fetch took its record), tell it the thread moved on. */
static __always_inline int futex_wait_ended(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct blocked_key key = { .tid = (__u32)pid_tgid };
	struct resumed_thread *event;
	struct thread_locks *t;
	__u64 *uaddr, waited;

	t = thread_state(key.tid, NULL);
	if (t && t->wait.waiting) {
		t->wait.waiting = 0;
		waited = t->wait.lock;
	} else {
		uaddr = bpf_map_lookup_elem(&futex_waiters, &key.tid);
		if (!uaddr)
			return 0;
		waited = *uaddr;
		bpf_map_delete_elem(&futex_waiters, &key.tid);
	}
	if (!bpf_map_delete_elem(&blocked_threads, &key))
		return 0; /* never fetched: nobody needs to know */
	event = gadget_reserve_buf(&resumed_threads, sizeof(*event));
	if (!event)
		return 0;
	event->pid = pid_tgid >> 32;
	event->tid = key.tid;
	event->lock = waited;
	gadget_submit_buf(ctx, &resumed_threads, event, sizeof(*event));
	return 0;
}

/* ------------------------------------------------------------------------
 * 13. Processes
 * Exits drop state and tell user space; in the traced tree, forks and execs
 * tell user space which C library to probe (and may pause the process until
 * it has).
 * ------------------------------------------------------------------------ */

#define SIGSTOP 19 /* x86-64 and arm64 */

struct dead_pid {
	gadget_pid pid;
	__u32 __pad;
	__u64 process_start;
	__u64 exited; /* boot time (ns) of the exit: how long its threads were blocked */
	gadget_mntns_id mntns_id;
	gadget_comm comm[TASK_COMM_LEN];
};

/* A process started a program, or joined the traced tree: user space finds
 * the C library it uses and probes it. */
struct process_event {
	gadget_mntns_id mntns_id;
	__u64 process_start;
	gadget_pid pid;
	gadget_ppid parent_pid;
	__u8 event; /* PROCESS_* */
	__u8 paused; /* stopped (SIGSTOP) until user space continues it */
	__u8 __pad[6];
	gadget_comm comm[TASK_COMM_LEN];
	char exe[EXE_NAME_MAX]; /* the file execve was given (exec events) */
};

GADGET_TRACER_MAP(dead_pids, 1024 * 256);
GADGET_TRACER_MAP(process_events, 1024 * 256);

/* Waking a ring buffer's reader costs more than everything else an exit or
 * an exec does (the kernel raises an interrupt on this CPU: ~11 us in a VM),
 * and a busy host starts and ends thousands of processes a second. These
 * records are therefore written without a wake-up, and one timer per ring
 * wakes its reader at most RING_WAKEUP_DELAY_NS after the first record it has
 * not seen. (A process paused for user space is sent at once.) */
#define RING_WAKEUP_DELAY_NS (10 * 1000 * 1000ULL)

enum batched_ring {
	RING_DEAD_PIDS = 0,
	RING_PROCESS_EVENTS = 1,
	RING_COUNT,
};

struct ring_wakeup {
	struct bpf_timer timer;
	__u64 armed; /* the timer is set and has not fired yet */
	__u64 ready; /* timer initialised and its callback set */
};

/* enum batched_ring -> the timer that wakes that ring's reader */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RING_COUNT);
	__type(key, __u32);
	__type(value, struct ring_wakeup);
} ring_wakeups SEC(".maps");

/* Stop each new process of the traced tree before its first instruction
 * (SIGSTOP), so that user space can probe its C library for it alone and then
 * continue it: uprobes placed per process (bystanders never trap) see a new
 * process from its start. */
const volatile bool pause_new_processes = false;
GADGET_PARAM(pause_new_processes);

extern int bpf_send_signal_task(struct task_struct *task, int sig,
				enum pid_type type, __u64 value) __ksym __weak;

static long forget_process_lock(struct bpf_map *map, struct lock_id *id,
				__u32 *gen, __u32 *pid)
{
	if (id->pid == *pid)
		bpf_map_delete_elem(&lock_generations, id);
	return 0;
}

/* A thread that exits while its process goes on, holding locks, leaves them
 * held for good: whoever waits for them next waits forever. (Threads of a
 * process that exits as a whole, or that another thread's exec ends, are not
 * to blame.) */
static __always_inline void report_locks_left(void *ctx, gadget_tid tid,
					      struct task_struct *task)
{
	struct thread_locks *t = thread_state(tid, NULL);
	__u32 nheld;

	if (!t || !t->nheld)
		return;
	if (BPF_CORE_READ(task, signal, live.counter) == 0 ||
	    BPF_CORE_READ(task, signal, flags) & SIGNAL_GROUP_EXIT ||
	    BPF_CORE_READ(task, signal, group_exec_task))
		return;
	forget_released(t, 0);
	nheld = t->nheld;
	for (int i = 0; i < MAX_HELD_LOCKS; i++) {
		if (i >= nheld)
			break;
		send_misuse(ctx, MISUSE_EXIT_HOLDING, t->held[i].lock,
			    t->held[i].gen, t->held[i].kind, t->held[i].mode,
			    t->held[i].mode, 0, t->held[i].site, 0);
	}
}

/* Wake a ring's reader, if it has records to read: an empty record discarded
 * with a forced wake-up (readers skip discarded records). */
static __always_inline void wake_reader(void *ring)
{
	void *record;

	if (!bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA))
		return;
	record = bpf_ringbuf_reserve(ring, sizeof(__u64), 0);
	if (record)
		bpf_ringbuf_discard(record, BPF_RB_FORCE_WAKEUP);
}

static int ring_wakeup_fired(void *map, __u32 *key, struct ring_wakeup *wakeup)
{
	wakeup->armed = 0; /* records from now on set the timer again */
	if (*key == RING_DEAD_PIDS)
		wake_reader(&dead_pids);
	else
		wake_reader(&process_events);
	return 0;
}

/* Send a record of `ring` (whose map is `map`) without waking its reader;
 * make sure its timer will. */
static __always_inline void submit_batched(void *ctx, void *map, __u32 ring,
					   void *record, __u64 size)
{
	struct ring_wakeup *wakeup = bpf_map_lookup_elem(&ring_wakeups, &ring);

	if (!wakeup) {
		gadget_submit_buf(ctx, map, record, size);
		return;
	}
	bpf_ringbuf_submit(record, BPF_RB_NO_WAKEUP);
	if (!wakeup->ready) {
		/* -EBUSY: another CPU initialised it first */
		bpf_timer_init(&wakeup->timer, &ring_wakeups, CLOCK_MONOTONIC);
		bpf_timer_set_callback(&wakeup->timer, ring_wakeup_fired);
		wakeup->ready = 1;
	}
	/* set it once: setting it again would push the wake-up back */
	if (__sync_lock_test_and_set(&wakeup->armed, 1))
		return;
	if (bpf_timer_start(&wakeup->timer, RING_WAKEUP_DELAY_NS, 0)) {
		/* no timer (it could not be set up): wake the reader now */
		wakeup->armed = 0;
		wake_reader(map);
	}
}

/* Thread exit: drop its state; last thread of a process: report the pid. */
static __always_inline int thread_exited(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	gadget_tid tid = (__u32)pid_tgid;
	__u32 pid = pid_tgid >> 32;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct dead_pid *event;
	__u32 *generations;

	/* only a process with lock state has threads with state (claim_slot) */
	generations = bpf_map_lookup_elem(&lock_processes, &pid);
	if (generations) {
		report_locks_left(ctx, tid, task);
		release_thread(tid);
		bpf_map_delete_elem(&blocked_threads, &tid);
		bpf_map_delete_elem(&futex_waiters, &tid);
	}

	/* signal->live drops to 0 when the last thread of the group exits */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (generations) {
		/* the walk costs ~100 us: only processes that destroyed a lock */
		if (*generations)
			bpf_for_each_map_elem(&lock_generations,
					      forget_process_lock, &pid, 0);
		bpf_map_delete_elem(&lock_processes, &pid);
		/* a CPython process's layout must not outlive it (a reused pid) */
		bpf_map_delete_elem(&python_processes, &pid);
	}
	if (current_is_filtered_out())
		return 0;

	event = gadget_reserve_buf(&dead_pids, sizeof(*event));
	if (!event)
		return 0;
	event->pid = pid;
	event->__pad = 0;
	event->process_start = current_process_start();
	event->exited = bpf_ktime_get_boot_ns();
	event->mntns_id = gadget_get_current_mntns_id();
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	submit_batched(ctx, &dead_pids, RING_DEAD_PIDS, event, sizeof(*event));
	if (tree_pid)
		bpf_map_delete_elem(&tree_processes, &pid);
	return 0;
}

/* Tell user space about a process whose C library may be new to it. */
static __always_inline void send_process_event(void *ctx,
					       struct task_struct *task,
					       __u8 kind, bool paused,
					       const char *exe)
{
	struct process_event *event;

	event = gadget_reserve_buf(&process_events, sizeof(*event));
	if (!event)
		return;
	__builtin_memset(event, 0, sizeof(*event));
	event->mntns_id = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	event->process_start =
		BPF_CORE_READ(task, group_leader, start_boottime);
	event->pid = BPF_CORE_READ(task, tgid);
	event->parent_pid = BPF_CORE_READ(task, real_parent, tgid);
	event->event = kind;
	event->paused = paused;
	BPF_CORE_READ_STR_INTO(&event->comm, task, comm);
	if (exe)
		bpf_probe_read_kernel_str(event->exe, sizeof(event->exe), exe);
	if (paused) /* it waits for user space: now */
		gadget_submit_buf(ctx, &process_events, event, sizeof(*event));
	else
		submit_batched(ctx, &process_events, RING_PROCESS_EVENTS, event,
			       sizeof(*event));
}

/* A new process whose parent is in the traced tree joins it. */
static __always_inline int process_forked(void *ctx, struct task_struct *parent,
					  struct task_struct *child)
{
	gadget_pid pid = BPF_CORE_READ(child, tgid);
	bool paused;
	__u8 one = 1;

	if (!tree_pid || BPF_CORE_READ(child, pid) != pid)
		return 0; /* no tree to follow, or a new thread */
	if (!in_traced_tree(BPF_CORE_READ(parent, tgid)))
		return 0;
	if (bpf_map_update_elem(&tree_processes, &pid, &one, BPF_ANY)) {
		count_stat(STAT_TREE_FULL);
		return 0;
	}
	/* a vfork child runs only until its exec, which pauses it */
	paused = pause_new_processes && !BPF_CORE_READ(child, vfork_done) &&
		 bpf_send_signal_task &&
		 !bpf_send_signal_task(child, SIGSTOP, PIDTYPE_TGID, 0);
	send_process_event(ctx, child, PROCESS_FORK, paused, NULL);
	return 0;
}

/* A process started another program, perhaps on another C library: the lock
 * state of the thread that ran the exec (`old_tid` before it, the process id
 * after) belongs to the old program. */
static __always_inline int process_executed(void *ctx, struct task_struct *task,
					    gadget_tid old_tid,
					    struct linux_binprm *bprm)
{
	bool paused;

	release_thread(old_tid);
	if (task->pid != old_tid)
		release_thread(task->pid);
	if (current_is_filtered_out())
		return 0;
	paused = pause_new_processes && tree_pid && !bpf_send_signal(SIGSTOP);
	send_process_event(ctx, task, PROCESS_EXEC, paused,
			   BPF_CORE_READ(bprm, filename));
	return 0;
}

/* ------------------------------------------------------------------------
 * 14. Datasources
 * ------------------------------------------------------------------------ */

GADGET_MAPITER(edges, edges);
GADGET_MAPITER(stacks, stackmap);
GADGET_MAPITER(files, files);
GADGET_MAPITER(counters, counters);
GADGET_MAPITER(blocked, blocked_threads);
GADGET_MAPITER(untraced_waits, untraced_waits);
GADGET_MAPITER(python_codes, python_codes);
GADGET_TRACER(dead_pids, dead_pids, dead_pid);
GADGET_TRACER(resumed, resumed_threads, resumed_thread);
GADGET_TRACER(processes, process_events, process_event);
GADGET_TRACER(misuse, misuse_events, misuse_event);

/* ------------------------------------------------------------------------
 * 15. Probes
 * ------------------------------------------------------------------------ */

/* every lock request but pthread_mutex_lock's (see hand_over_request); ig
 * places it nowhere, and neither does the client */
SEC("uprobe/gadget_program_disabled")
int trace_lock_request(struct pt_regs *ctx)
{
	return take_over_request(ctx);
}

/* pthread mutexes (C11 mtx_* and C++ std::mutex call these) */

SEC("uprobe/libc:pthread_mutex_lock")
int BPF_KPROBE(trace_uprobe_mutex_lock, void *mutex)
{
	return lock_requested(ctx, (__u64)mutex, LOCK_MODE_EXCLUSIVE,
			      LOCK_KIND_MUTEX, ACQUIRE_BLOCKING, 0);
}

SEC("uprobe/libc:pthread_mutex_trylock")
int BPF_KPROBE(trace_uprobe_mutex_trylock, void *mutex)
{
	return hand_over_request(ctx, (__u64)mutex, LOCK_MODE_EXCLUSIVE,
				 LOCK_KIND_MUTEX, ACQUIRE_TRY, 0);
}

/* Placed by the client on musl only (see owner_tracked); ig places it nowhere. */
SEC("uprobe/gadget_program_disabled")
int BPF_KRETPROBE(trace_uretprobe_mutex_trylock)
{
	return lock_returned(ctx);
}

SEC("uprobe/libc:pthread_mutex_timedlock")
int BPF_KPROBE(trace_uprobe_mutex_timedlock, void *mutex)
{
	return hand_over_request(ctx, (__u64)mutex, LOCK_MODE_EXCLUSIVE,
				 LOCK_KIND_MUTEX, ACQUIRE_TIMED, 0);
}

/* Placed by the client on musl only (see owner_tracked); ig places it nowhere. */
SEC("uprobe/gadget_program_disabled")
int BPF_KRETPROBE(trace_uretprobe_mutex_timedlock)
{
	return lock_returned(ctx);
}

SEC("uprobe/libc:pthread_mutex_clocklock")
int BPF_KPROBE(trace_uprobe_mutex_clocklock, void *mutex)
{
	return hand_over_request(ctx, (__u64)mutex, LOCK_MODE_EXCLUSIVE,
				 LOCK_KIND_MUTEX, ACQUIRE_TIMED, 0);
}

/* Placed by the client on musl only (see owner_tracked); ig places it nowhere. */
SEC("uprobe/gadget_program_disabled")
int BPF_KRETPROBE(trace_uretprobe_mutex_clocklock)
{
	return lock_returned(ctx);
}

/* Placed by the client, on musl (its normal mutexes record no owner) and,
 * when asked to check unlocks, on glibc too; ig places it nowhere. */
SEC("uprobe/gadget_program_disabled")
int BPF_KPROBE(trace_uprobe_mutex_unlock, void *mutex)
{
	return lock_released(ctx, (__u64)mutex, LOCK_KIND_MUTEX, 0);
}

SEC("uprobe/libc:pthread_mutex_destroy")
int BPF_KPROBE(trace_uprobe_mutex_destroy, void *mutex)
{
	return lock_destroyed((__u64)mutex);
}

/* pthread rwlocks (C++ std::shared_mutex calls these) */

SEC("uprobe/libc:pthread_rwlock_rdlock")
int BPF_KPROBE(trace_uprobe_rwlock_rdlock, void *rwlock)
{
	return hand_over_request(ctx, (__u64)rwlock, LOCK_MODE_SHARED,
				 LOCK_KIND_RWLOCK, ACQUIRE_BLOCKING, 0);
}

SEC("uprobe/libc:pthread_rwlock_wrlock")
int BPF_KPROBE(trace_uprobe_rwlock_wrlock, void *rwlock)
{
	return hand_over_request(ctx, (__u64)rwlock, LOCK_MODE_EXCLUSIVE,
				 LOCK_KIND_RWLOCK, ACQUIRE_BLOCKING, 0);
}

SEC("uprobe/libc:pthread_rwlock_tryrdlock")
int BPF_KPROBE(trace_uprobe_rwlock_tryrdlock, void *rwlock)
{
	return hand_over_request(ctx, (__u64)rwlock, LOCK_MODE_SHARED,
				 LOCK_KIND_RWLOCK, ACQUIRE_TRY, 0);
}

SEC("uretprobe/libc:pthread_rwlock_tryrdlock")
int BPF_KRETPROBE(trace_uretprobe_rwlock_tryrdlock)
{
	return lock_returned(ctx);
}

SEC("uprobe/libc:pthread_rwlock_trywrlock")
int BPF_KPROBE(trace_uprobe_rwlock_trywrlock, void *rwlock)
{
	return hand_over_request(ctx, (__u64)rwlock, LOCK_MODE_EXCLUSIVE,
				 LOCK_KIND_RWLOCK, ACQUIRE_TRY, 0);
}

SEC("uretprobe/libc:pthread_rwlock_trywrlock")
int BPF_KRETPROBE(trace_uretprobe_rwlock_trywrlock)
{
	return lock_returned(ctx);
}

SEC("uprobe/libc:pthread_rwlock_timedrdlock")
int BPF_KPROBE(trace_uprobe_rwlock_timedrdlock, void *rwlock)
{
	return hand_over_request(ctx, (__u64)rwlock, LOCK_MODE_SHARED,
				 LOCK_KIND_RWLOCK, ACQUIRE_TIMED, 0);
}

SEC("uretprobe/libc:pthread_rwlock_timedrdlock")
int BPF_KRETPROBE(trace_uretprobe_rwlock_timedrdlock)
{
	return lock_returned(ctx);
}

SEC("uprobe/libc:pthread_rwlock_timedwrlock")
int BPF_KPROBE(trace_uprobe_rwlock_timedwrlock, void *rwlock)
{
	return hand_over_request(ctx, (__u64)rwlock, LOCK_MODE_EXCLUSIVE,
				 LOCK_KIND_RWLOCK, ACQUIRE_TIMED, 0);
}

SEC("uretprobe/libc:pthread_rwlock_timedwrlock")
int BPF_KRETPROBE(trace_uretprobe_rwlock_timedwrlock)
{
	return lock_returned(ctx);
}

SEC("uprobe/libc:pthread_rwlock_clockrdlock")
int BPF_KPROBE(trace_uprobe_rwlock_clockrdlock, void *rwlock)
{
	return hand_over_request(ctx, (__u64)rwlock, LOCK_MODE_SHARED,
				 LOCK_KIND_RWLOCK, ACQUIRE_TIMED, 0);
}

SEC("uretprobe/libc:pthread_rwlock_clockrdlock")
int BPF_KRETPROBE(trace_uretprobe_rwlock_clockrdlock)
{
	return lock_returned(ctx);
}

SEC("uprobe/libc:pthread_rwlock_clockwrlock")
int BPF_KPROBE(trace_uprobe_rwlock_clockwrlock, void *rwlock)
{
	return hand_over_request(ctx, (__u64)rwlock, LOCK_MODE_EXCLUSIVE,
				 LOCK_KIND_RWLOCK, ACQUIRE_TIMED, 0);
}

SEC("uretprobe/libc:pthread_rwlock_clockwrlock")
int BPF_KRETPROBE(trace_uretprobe_rwlock_clockwrlock)
{
	return lock_returned(ctx);
}

SEC("uprobe/libc:pthread_rwlock_unlock")
int BPF_KPROBE(trace_uprobe_rwlock_unlock, void *rwlock)
{
	return lock_released(ctx, (__u64)rwlock, LOCK_KIND_RWLOCK, 0);
}

SEC("uprobe/libc:pthread_rwlock_destroy")
int BPF_KPROBE(trace_uprobe_rwlock_destroy, void *rwlock)
{
	return lock_destroyed((__u64)rwlock);
}

/* pthread spinlocks */

SEC("uprobe/libc:pthread_spin_lock")
int BPF_KPROBE(trace_uprobe_spin_lock, void *spinlock)
{
	return hand_over_request(ctx, (__u64)spinlock, LOCK_MODE_EXCLUSIVE,
				 LOCK_KIND_SPINLOCK, ACQUIRE_BLOCKING, 0);
}

/* x86-64 glibc's pthread_spin_lock starts with a locked instruction, which
 * takes no uprobe. This program goes where the lock has just been taken, after
 * that instruction (the client finds the place; ig leaves the program alone);
 * the lock is still in the first argument register there. */
SEC("uprobe/gadget_program_disabled")
int BPF_KPROBE(trace_uprobe_spin_lock_taken, void *spinlock)
{
	return hand_over_request(ctx, (__u64)spinlock, LOCK_MODE_EXCLUSIVE,
				 LOCK_KIND_SPINLOCK, ACQUIRE_BLOCKING, 0);
}

SEC("uprobe/libc:pthread_spin_trylock")
int BPF_KPROBE(trace_uprobe_spin_trylock, void *spinlock)
{
	return hand_over_request(ctx, (__u64)spinlock, LOCK_MODE_EXCLUSIVE,
				 LOCK_KIND_SPINLOCK, ACQUIRE_TRY, 0);
}

SEC("uretprobe/libc:pthread_spin_trylock")
int BPF_KRETPROBE(trace_uretprobe_spin_trylock)
{
	return lock_returned(ctx);
}

SEC("uprobe/libc:pthread_spin_unlock")
int BPF_KPROBE(trace_uprobe_spin_unlock, void *spinlock)
{
	return lock_released(ctx, (__u64)spinlock, LOCK_KIND_SPINLOCK, 0);
}

SEC("uprobe/libc:pthread_spin_destroy")
int BPF_KPROBE(trace_uprobe_spin_destroy, void *spinlock)
{
	return lock_destroyed((__u64)spinlock);
}

/* Lock functions outside the C library's pthread ones, found by the client
 * per process (GLib's GMutex, CPython's locks, Abseil's Mutex, and those a
 * user declares): one program per role, told by the probe's cookie which
 * argument is the lock and what kind of lock it is (see COOKIE_*). ig places
 * them nowhere. */

#define MAX_LOCK_ARGUMENT 4 /* arguments 0-4: the registers PT_REGS_PARM1-5 */

/* The lock a lock function is called with: the cookie's argument. (Each
 * register is read at its own constant offset: the verifier refuses a
 * context read at a computed one, which a switch compiles to.) */
static __always_inline __u64 lock_argument(struct pt_regs *ctx, __u64 cookie)
{
	__u64 args[MAX_LOCK_ARGUMENT + 1] = {
		PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx),
		PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx)
	};
	__u32 i = (cookie >> COOKIE_ARG_SHIFT) & 7;

	return i <= MAX_LOCK_ARGUMENT ? args[i] : 0;
}

static __always_inline __u8 cookie_kind(__u64 cookie)
{
	return (cookie >> COOKIE_KIND_SHIFT) & 0xff;
}

static __always_inline __u8 cookie_flags(__u64 cookie)
{
	return (cookie >> COOKIE_FLAGS_SHIFT) & 0xff;
}

SEC("uprobe/gadget_program_disabled")
int trace_uprobe_lock_function(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);

	return hand_over_request(ctx, lock_argument(ctx, cookie),
				 (cookie >> COOKIE_MODE_SHIFT) & 1,
				 cookie_kind(cookie),
				 (cookie >> COOKIE_HOW_SHIFT) & 3,
				 cookie_flags(cookie));
}

/* Return of a try or timed lock function (its cookie says how its result
 * tells success), or of a blocking one that sleeps elsewhere than on its
 * lock (LOCK_FLAG_WAITS_ELSEWHERE). */
SEC("uprobe/gadget_program_disabled")
int BPF_KRETPROBE(trace_uretprobe_lock_function)
{
	return lock_returned(ctx);
}

SEC("uprobe/gadget_program_disabled")
int trace_uprobe_unlock_function(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);

	return lock_released(ctx, lock_argument(ctx, cookie),
			     cookie_kind(cookie), cookie_flags(cookie));
}

/* destroy (sem_destroy, g_mutex_clear, absl::Mutex's destructor): a reused
 * address is a new lock */
SEC("uprobe/gadget_program_disabled")
int trace_uprobe_destroy_function(struct pt_regs *ctx)
{
	return lock_destroyed(lock_argument(ctx, bpf_get_attach_cookie(ctx)));
}

/* futex waits: which tracked threads are blocked in a lock right now */

SEC("tracepoint/syscalls/sys_enter_futex")
int trace_futex_wait_start(struct syscall_trace_enter *ctx)
{
	return futex_wait_started(ctx, ctx->args[0], ctx->args[1],
				  ctx->args[3]);
}

SEC("tracepoint/syscalls/sys_exit_futex")
int trace_futex_wait_end(struct syscall_trace_exit *ctx)
{
	return futex_wait_ended(ctx);
}

/* process and thread exits */

/* (a BTF tracepoint: classic tracepoint programs may not use timers) */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(trace_sched_process_exit)
{
	return thread_exited(ctx);
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(trace_process_fork, struct task_struct *parent,
	     struct task_struct *child)
{
	return process_forked(ctx, parent, child);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(trace_process_exec, struct task_struct *task, pid_t old_pid,
	     struct linux_binprm *bprm)
{
	return process_executed(ctx, task, old_pid, bprm);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
