// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Lock owners: where glibc and musl record a lock's owner and type, and the
 * held locks a thread let go of without a probe seeing it. Owns no map.
 */

#ifndef IGDEADLOCK_OWNERS_H
#define IGDEADLOCK_OWNERS_H

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
#include "held_locks.h"

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
/* Linux's PID_MAX_LIMIT: every thread id is below it, so an owner word at or
 * above it names no thread (the memory is no lock) */
#define THREAD_ID_LIMIT (4 * 1024 * 1024)
/* glibc: an rwlock's __readers counts readers above three state bits; this
 * one says a writer holds it */
#define GLIBC_RWLOCK_READERS_SHIFT 3
#define GLIBC_RWLOCK_WRLOCKED 0x2

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

/* Whether a lock is free, as its C library's words say: nobody holds it.
 * False where they do not tell (other kinds of locks; spinlocks, whose unlock
 * probe also sees pthread_spin_init, which shares its code). */
static __always_inline bool lock_is_free(__u64 lock, __u8 kind, __u8 libc)
{
	__u64 address = lock;
	__u32 word = 1;

	if (kind != LOCK_KIND_MUTEX && kind != LOCK_KIND_RWLOCK)
		return false;
	if (libc == LIBC_MUSL && kind == LOCK_KIND_MUTEX)
		address += MUSL_MUTEX_LOCK_OFFSET;
	if (bpf_probe_read_user(&word, sizeof(word), (void *)address))
		return false;
	if (libc == LIBC_GLIBC && kind == LOCK_KIND_RWLOCK)
		return !(word >> GLIBC_RWLOCK_READERS_SHIFT) &&
		       !(word & GLIBC_RWLOCK_WRLOCKED);
	return word == 0;
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

#endif /* IGDEADLOCK_OWNERS_H */
