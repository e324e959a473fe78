// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Counters: what could not be tracked (held set full, maps full...), per
 * process. Owns counters; every other header counts through count_stat().
 */

#ifndef IGDEADLOCK_COUNTERS_H
#define IGDEADLOCK_COUNTERS_H

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

struct counter_key {
	__u32 counter; /* STAT_* */
	gadget_pid pid; /* the process it happened in: reports say where */
};

struct counter_value {
	__u64 count; /* events since the previous fetch */
};

/* STAT_* -> how often it happened since the last fetch */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_COUNTERS);
	__type(key, struct counter_key);
	__type(value, struct counter_value);
} counters SEC(".maps");

/* Rare events only: the fetch deletes the entry, the next one re-creates it. */
static __always_inline void count_stat(__u32 index)
{
	struct counter_key key = { .counter = index,
				   .pid = bpf_get_current_pid_tgid() >> 32 };
	struct counter_value one = { .count = 1 }, *value;

	value = bpf_map_lookup_elem(&counters, &key);
	if (value) {
		__sync_fetch_and_add(&value->count, 1);
		return;
	}
	if (bpf_map_update_elem(&counters, &key, &one, BPF_NOEXIST)) {
		value = bpf_map_lookup_elem(&counters, &key);
		if (value)
			__sync_fetch_and_add(&value->count, 1);
	}
}

#endif /* IGDEADLOCK_COUNTERS_H */
