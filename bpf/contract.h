// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * The contract with user space: enums, the attach cookie's and the site id's
 * bit layouts (igdeadlock/gadget.py's values, checked by
 * tests/unit/test_gadget_contract.py). Owns no map.
 */

#ifndef IGDEADLOCK_CONTRACT_H
#define IGDEADLOCK_CONTRACT_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

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

/* The system call a thread of the blocked-thread snapshot waits in. */
enum snapshot_call {
	SNAPSHOT_FUTEX = 0, /* futex(2): a wait on one word */
	SNAPSHOT_FUTEX_RESTART =
		1, /* a timed futex wait resumed after a signal */
	SNAPSHOT_FUTEX_WAITV = 2, /* futex_waitv(2): a wait on several words */
};

/* Misuse of a lock: a hang, or an error the program may not check. */
enum misuse {
	MISUSE_RELOCK_HELD =
		0, /* a thread requests a non-recursive lock it holds */
	MISUSE_UNLOCK_NOT_OWNER =
		1, /* a thread unlocks a lock another one holds */
	MISUSE_EXIT_HOLDING = 2, /* a thread exits holding a lock */
	MISUSE_UNLOCK_NOT_HELD = 3, /* a thread unlocks a lock nobody holds */
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
	STAT_RETURN_MISSED = 8, /* a try or timed lock's return not seen */
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

/* An acquisition site id: the CPU that numbered it above a per-CPU count
 * (unique without atomics); 0 means "no stack". */
#define SITE_CPU_SHIFT 48

#endif /* IGDEADLOCK_CONTRACT_H */
