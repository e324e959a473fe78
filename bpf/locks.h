// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Acquire and release: what each lock function's entry and return do to a
 * thread's held set. Owns lock_requests and lock_request_program (the request
 * hand-over).
 */

#ifndef IGDEADLOCK_LOCKS_H
#define IGDEADLOCK_LOCKS_H

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
#include "lock_identity.h"
#include "sites.h"
#include "edges.h"
#include "owners.h"
#include "misuse.h"
#include "semaphores.h"

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

/* A try or timed call still pending while the thread runs outside its frame
 * (a lock call from its caller or above, or the return of an outer call): it
 * has returned, and its return probe did not run (the kernel can drop a
 * return instance). Whether it acquired is unknown: nothing is held for it,
 * so no false edge comes from it, and the miss is counted, never silent.
 * outside: a stack pointer at a call's entry at or above the pending one's. */
static __always_inline void check_return_missed(struct thread_locks *t,
						__u64 outside)
{
	if (t->pending.active && outside >= t->pending.sp) {
		t->pending.active = 0;
		count_stat(STAT_RETURN_MISSED);
	}
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
	struct dep_cache_entry *cached;
	struct thread_locks *t;
	gadget_tid tid;
	__u64 site;
	__u32 gen = 0;
	int i;

	if (hangs_only)
		return 0;
	tid = current_tid();
	if (!lock ||
	    ((flags & LOCK_FLAG_ANY_RELEASER) && counts_beyond_one(lock)))
		return 0;
	t = thread_state(tid, ctx);
	if (!t)
		return 0;
	if (t->libc == LIBC_MUSL && nested_lock_call(ctx, t, lock))
		return 0;
	check_return_missed(t, PT_REGS_SP(ctx));
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
	struct lock_request *request;

	if (hangs_only)
		return 0;
	request = bpf_map_lookup_elem(&lock_requests, &(__u32){ 0 });
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
	struct thread_locks *t;
	int i;

	if (hangs_only)
		return 0;
	t = thread_state(current_tid(), NULL);
	if (!t)
		return 0;
	/* a return above the pending call's frame (its own is equal) */
	check_return_missed(t, PT_REGS_SP(ctx) - RETURN_SP_OFFSET - 1);
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
	struct thread_locks *t = thread_state_of(owner);
	int i;

	if (!t)
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
	gadget_tid *holder = lock_holder(&id);

	if (!holder)
		return;
	released_by_other(*holder, lock);
	released_as_signal(&id);
}

/* An unlock of a lock the current thread does not hold: if the C library
 * records another thread as its owner, that is a misuse (unlock-not-owner),
 * and the owner holds it no more; if it records that nobody holds it, one too
 * (unlock-not-held: a lock unlocked once more than it was locked; mutexes and
 * rwlocks only, see lock_is_free). One the
 * thread took before tracing began names it as its owner, or is not free.
 * Threads that never took a lock we saw have no state, and are checked all
 * the same. */
static __always_inline void unlocked_unheld(void *ctx, __u64 lock, __u8 kind,
					    __u8 libc, __u32 ns_tid)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 owner = lock_owner(lock, kind, libc) & OWNER_TID_MASK;

	if (owner == ns_tid || owner >= THREAD_ID_LIMIT)
		return; /* its own; or no thread at all: the memory is no lock */
	if (!owner) {
		if (lock_is_free(lock, kind, libc))
			send_misuse(ctx, MISUSE_UNLOCK_NOT_HELD, lock,
				    lock_generation(pid_tgid >> 32, lock), kind,
				    LOCK_MODE_EXCLUSIVE, LOCK_MODE_EXCLUSIVE,
				    capture_site(ctx, true), 0, 0);
		return;
	}
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
	struct thread_locks *t;
	struct held_lock *held;
	gadget_tid tid;
	int i;

	if (hangs_only)
		return 0;
	tid = current_tid();
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
	struct lock_id id = { .lock = lock };
	__u32 *generations;

	if (hangs_only)
		return 0;
	id.pid = bpf_get_current_pid_tgid() >> 32;
	/* a process that never took a lock we saw has no edge to tell apart */
	generations = lock_process(id.pid);
	if (!lock || !generations)
		return 0;
	forget_semaphore(&id);
	new_lock_generation(&id, generations);
	return 0;
}

#endif /* IGDEADLOCK_LOCKS_H */
