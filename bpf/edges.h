// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Lock-order edges: a dependency is looked up in the thread's cache, then in
 * known_dependencies; only a new one writes edges. Owns known_dependencies and
 * edges.
 */

#ifndef IGDEADLOCK_EDGES_H
#define IGDEADLOCK_EDGES_H

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
#include "held_locks.h"
#include "lock_identity.h"
#include "records.h"
#include "sites.h"

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

	s = scratch();
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
	__u32 epoch = current_destroy_epoch();

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

#endif /* IGDEADLOCK_EDGES_H */
