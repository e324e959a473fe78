// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Which processes are traced: IG's filters and a traced command's process
 * tree, never igdeadlock's own. Owns tree_processes, ignored_processes and the
 * tree_pid and hangs_only parameters.
 */

#ifndef IGDEADLOCK_SCOPE_H
#define IGDEADLOCK_SCOPE_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

#include "sizes.h"

/* The traced command's process (0: trace every process): only it and its
 * descendants are traced, so bystanders produce no records. */
const volatile gadget_pid tree_pid = 0;
GADGET_PARAM(tree_pid);

/* Diagnose hangs only: the lock probes and the futex tracepoints do nothing
 * (the verifier drops their code), blocked threads come from the snapshot. */
const volatile bool hangs_only = false;
GADGET_PARAM(hangs_only);

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

/* process -> 1: igdeadlock's own processes (the companion, its daemon),
 * never traced; written by the companion on their host */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IGNORED_PROCESSES);
	__type(key, gadget_pid);
	__type(value, __u8);
} ignored_processes SEC(".maps");

/* The current process is one of igdeadlock's own: it takes no thread state,
 * and its waits are not counted. */
static __always_inline bool current_is_igdeadlock(void)
{
	gadget_pid pid = bpf_get_current_pid_tgid() >> 32;

	return bpf_map_lookup_elem(&ignored_processes, &pid);
}

/* A process joins the traced tree (0), or cannot be tracked (an error). */
static __always_inline long join_traced_tree(gadget_pid pid)
{
	__u8 one = 1;

	return bpf_map_update_elem(&tree_processes, &pid, &one, BPF_ANY);
}

static __always_inline void leave_traced_tree(gadget_pid *pid)
{
	bpf_map_delete_elem(&tree_processes, pid);
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

#endif /* IGDEADLOCK_SCOPE_H */
