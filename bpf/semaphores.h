// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Locks any thread may release (semaphores): who holds each, and those found
 * to count or signal, which are no locks. Owns lock_holders and
 * counting_semaphores.
 */

#ifndef IGDEADLOCK_SEMAPHORES_H
#define IGDEADLOCK_SEMAPHORES_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

#include "sizes.h"
#include "held_locks.h"
#include "lock_identity.h"

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

/* The thread that holds the lock `id` (any thread may release it), if any. */
static __always_inline gadget_tid *lock_holder(struct lock_id *id)
{
	return bpf_map_lookup_elem(&lock_holders, id);
}

/* Released by a thread that did not take it: a signal (CPython's Condition
 * wakes a waiter so), no lock, until it is destroyed. */
static __always_inline void released_as_signal(struct lock_id *id)
{
	bpf_map_delete_elem(&lock_holders, id);
	bpf_map_update_elem(&counting_semaphores, id, &(__u8){ 1 }, BPF_ANY);
}

/* Destroyed: what was known of the address as a lock any thread may release. */
static __always_inline void forget_semaphore(struct lock_id *id)
{
	bpf_map_delete_elem(&counting_semaphores, id);
	bpf_map_delete_elem(&lock_holders, id);
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

#endif /* IGDEADLOCK_SEMAPHORES_H */
