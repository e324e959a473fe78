// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Lock identity: a destroyed lock's address names a new lock afterwards. Owns
 * lock_generations and destroy_epoch.
 */

#ifndef IGDEADLOCK_LOCK_IDENTITY_H
#define IGDEADLOCK_LOCK_IDENTITY_H

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
#include "counters.h"

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

/* How many destroys there were: a thread's cache filled under another count
 * may hold stale generations. */
static __always_inline __u32 current_destroy_epoch(void)
{
	return destroy_epoch;
}

/* Generation of a lock address: 0 until it is first destroyed. */
static __always_inline __u32 lock_generation(__u32 pid, __u64 lock)
{
	struct lock_id id = { .lock = lock, .pid = pid };
	__u32 *gen = bpf_map_lookup_elem(&lock_generations, &id);

	return gen ? *gen : 0;
}

/* The lock at `id` was destroyed: its address names a new lock from now on.
 * `generations` counts the process's addresses with a generation (forgotten
 * at its exit). */
static __always_inline void new_lock_generation(struct lock_id *id,
						__u32 *generations)
{
	__u32 *gen = bpf_map_lookup_elem(&lock_generations, id), first = 1;

	if (gen)
		__sync_fetch_and_add(gen, 1);
	else if (bpf_map_update_elem(&lock_generations, id, &first,
				     BPF_NOEXIST))
		count_stat(STAT_GENERATIONS_FULL);
	else
		__sync_fetch_and_add(generations, 1);
	__sync_fetch_and_add(&destroy_epoch, 1);
}

static long forget_process_lock(struct bpf_map *map, struct lock_id *id,
				__u32 *gen, __u32 *pid)
{
	if (id->pid == *pid)
		bpf_map_delete_elem(&lock_generations, id);
	return 0;
}

/* A process is gone: the generations of its lock addresses go too (the walk
 * costs ~100 us: callers do it only for processes that destroyed a lock). */
static __always_inline void forget_lock_generations(gadget_pid *pid)
{
	bpf_for_each_map_elem(&lock_generations, forget_process_lock, pid, 0);
}

#endif /* IGDEADLOCK_LOCK_IDENTITY_H */
