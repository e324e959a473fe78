// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Per-thread lock state: the locks each thread holds, its dependency cache,
 * the processes with lock state. Owns thread_slots, thread_to_held_mutexes,
 * slot_owners, last_thread, lock_processes and ns_threads.
 */

#ifndef IGDEADLOCK_HELD_LOCKS_H
#define IGDEADLOCK_HELD_LOCKS_H

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
	return task_ns_tid(bpf_get_current_task_btf());
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

/* Thread `tid`'s lock state, if it has any (whichever CPU it last ran on). */
static __always_inline struct thread_locks *thread_state_of(gadget_tid tid)
{
	__u32 *slot = bpf_map_lookup_elem(&thread_to_held_mutexes, &tid);
	struct thread_locks *t;
	__u32 index;

	if (!slot)
		return NULL;
	index = *slot;
	t = bpf_map_lookup_elem(&thread_slots, &index);
	return t && t->owner == tid ? t : NULL;
}

/* A process with lock state: how many destroyed lock addresses it has (see
 * lock_processes); NULL for a process none of whose threads has state. */
static __always_inline __u32 *lock_process(gadget_pid pid)
{
	return bpf_map_lookup_elem(&lock_processes, &pid);
}

/* The process is gone: so is its lock state. */
static __always_inline void forget_lock_process(gadget_pid *pid)
{
	bpf_map_delete_elem(&lock_processes, pid);
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
		if (!probe_ctx || current_is_filtered_out() ||
		    current_is_igdeadlock())
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

#endif /* IGDEADLOCK_HELD_LOCKS_H */
