// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Misuse of a lock: a relock, an unlock by another thread, an exit holding
 * locks. Owns the misuse_events ring buffer.
 */

#ifndef IGDEADLOCK_MISUSE_H
#define IGDEADLOCK_MISUSE_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

#include "contract.h"
#include "helpers.h"

struct misuse_event {
	gadget_mntns_id mntns_id;
	__u64 process_start;
	__u64 lock;
	__u64 site; /* stack key of where it happened, 0 if none */
	__u64 held_site; /* stack key of where the lock was taken, 0 if unknown */
	gadget_pid pid;
	gadget_tid tid;
	__u32 gen;
	__u32 owner_tid; /* the thread holding the lock (unlock-not-owner), 0 if unknown */
	__u8 misuse; /* enum misuse */
	__u8 kind;
	__u8 mode; /* how the lock was requested (relock), held otherwise */
	__u8 held_mode; /* how the thread holds it (relock) */
	__u32 __pad;
	gadget_comm comm[TASK_COMM_LEN];
};

GADGET_TRACER_MAP(misuse_events, 1024 * 64);

/* Tell user space about a misuse of a lock by the current thread. */
static __always_inline void send_misuse(void *ctx, __u8 misuse, __u64 lock,
					__u32 gen, __u8 kind, __u8 mode,
					__u8 held_mode, __u64 site,
					__u64 held_site, __u32 owner)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct misuse_event *event;

	event = gadget_reserve_buf(&misuse_events, sizeof(*event));
	if (!event)
		return;
	__builtin_memset(event, 0, sizeof(*event));
	event->mntns_id = gadget_get_current_mntns_id();
	event->process_start = current_process_start();
	event->lock = lock;
	event->site = site;
	event->held_site = held_site;
	event->pid = pid_tgid >> 32;
	event->tid = (__u32)pid_tgid;
	event->gen = gen;
	event->owner_tid = owner;
	event->misuse = misuse;
	event->kind = kind;
	event->mode = mode;
	event->held_mode = held_mode;
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	gadget_submit_buf(ctx, &misuse_events, event, sizeof(*event));
}

#endif /* IGDEADLOCK_MISUSE_H */
