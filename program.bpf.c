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
 * This file holds the datasources and the probes; each concern is a header of
 * bpf/ that owns its maps (no header touches another's maps but through its
 * functions):
 *   bpf/contract.h       enums and bit layouts shared with user space (gadget.py)
 *   bpf/sizes.h          map capacities, nesting depths
 *   bpf/helpers.h        hashes, the current task, the calling site
 *   bpf/counters.h       what could not be tracked
 *   bpf/scope.h          which processes are traced: the command's tree, IG's filters
 *   bpf/held_locks.h     per-thread lock state: held locks, dependency cache
 *   bpf/lock_identity.h  generations of reused lock addresses
 *   bpf/records.h        what user space reads, and the scratch space records are built in
 *   bpf/python.h         CPython frames at a site
 *   bpf/sites.h          acquisition stacks and the files they point into
 *   bpf/edges.h          new dependencies, recorded once each
 *   bpf/owners.h         where C libraries record lock owners; releases seen from them
 *   bpf/misuse.h         relocks, unlocks by another thread, exits holding locks
 *   bpf/semaphores.h     locks any thread may release
 *   bpf/locks.h          acquire and release: what each lock function does
 *   bpf/futex.h          blocked threads: futex waits inside and outside the locks
 *   bpf/processes.h      the traced tree, execs, exits
 *   bpf/snapshot.h       the threads waiting on a futex now, read from the kernel
 */

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

#include "bpf/contract.h"
#include "bpf/sizes.h"
#include "bpf/helpers.h"
#include "bpf/counters.h"
#include "bpf/scope.h"
#include "bpf/held_locks.h"
#include "bpf/lock_identity.h"
#include "bpf/records.h"
#include "bpf/python.h"
#include "bpf/sites.h"
#include "bpf/edges.h"
#include "bpf/owners.h"
#include "bpf/misuse.h"
#include "bpf/semaphores.h"
#include "bpf/locks.h"
#include "bpf/futex.h"
#include "bpf/processes.h"
#include "bpf/snapshot.h"

/* ------------------------------------------------------------------------
 * Datasources
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
GADGET_ITER(waiting, waiting_thread, snapshot_waiting_threads);

/* ------------------------------------------------------------------------
 * Probes
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

/* The blocked-thread snapshot: IG runs the iterator when the gadget starts
 * and then as the `waiting` datasource's fetch-interval and fetch-count
 * annotations say (once by default). */
SEC("iter/task")
int snapshot_waiting_threads(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;

	if (!task)
		return 0;
	return snapshot_thread(seq, task);
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
