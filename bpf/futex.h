// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Blocked threads: futex waits inside the lock a thread acquires, other
 * endless waits, and waits outside every traced lock function. Owns
 * blocked_threads, futex_waiters, untraced_waits, untraced_wait_sites and the
 * resumed_threads ring buffer.
 */

#ifndef IGDEADLOCK_FUTEX_H
#define IGDEADLOCK_FUTEX_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

#include "contract.h"
#include "sizes.h"
#include "helpers.h"
#include "counters.h"
#include "scope.h"
#include "held_locks.h"
#include "records.h"
#include "sites.h"
#include "owners.h"

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
	return lock_process(pid) || tree_pid || gadget_filter_by_mntns;
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

	if (current_is_filtered_out() || current_is_igdeadlock())
		return;
	s = scratch();
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
	s = scratch();
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
	struct blocked_key key = {};
	__u64 waited = 0, pid_tgid;
	struct thread_locks *t;
	struct blocked_thread *b;
	struct scratch_buffers *s;

	if (hangs_only)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	key.tid = (__u32)pid_tgid;
	t = thread_state(key.tid, NULL);
	if (!t || !waits_for_lock(t, uaddr, op)) {
		if (is_futex_wait(op))
			note_untraced_wait(ctx);
		if (is_endless_plain_wait(op, timeout))
			return other_wait_started(ctx, t, uaddr);
		return 0;
	}
	s = scratch();
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

/* The thread exited: it waits no more. */
static __always_inline void forget_thread_waits(gadget_tid tid)
{
	/* (a blocked_key is the thread id alone) */
	bpf_map_delete_elem(&blocked_threads, &tid);
	bpf_map_delete_elem(&futex_waiters, &tid);
}

/* The futex wait ended. If user space already saw the thread blocked (the
 * fetch took its record), tell it the thread moved on. */
static __always_inline int futex_wait_ended(void *ctx)
{
	struct blocked_key key = {};
	struct resumed_thread *event;
	struct thread_locks *t;
	__u64 *uaddr, waited, pid_tgid;

	if (hangs_only)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	key.tid = (__u32)pid_tgid;
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

#endif /* IGDEADLOCK_FUTEX_H */
