// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Small helpers: hashes, the current task, the calling site, user words, the
 * architecture's stack and page constants. Owns no map.
 */

#ifndef IGDEADLOCK_HELPERS_H
#define IGDEADLOCK_HELPERS_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

#include "sizes.h"

#define EEXIST 17 /* <errno.h>: vmlinux.h has no macros */
#define CLOCK_MONOTONIC 1 /* <linux/time.h> */

#define GOLDEN_RATIO_64 0x9E3779B97F4A7C15ULL

/* Where the stack pointer is at a return probe, relative to the entry: x86
 * `ret` pops the return address, arm64 returns through the link register. */
#if defined(bpf_target_x86)
#define RETURN_SP_OFFSET 8
#else
#define RETURN_SP_OFFSET 0
#endif

/* The kernel's page size (vm_pgoff counts pages): 4 KiB on x86-64; an arm64
 * kernel is built for 4, 16 or 64 KiB pages (CONFIG_ARM64_PAGE_SHIFT, which
 * every arm64 kernel has). Not __weak: IG's loader (cilium/ebpf) refuses a
 * weak __kconfig extern, and ig checks one architecture's object at random
 * when it builds the image, so a weak one failed one build in four. */
#if defined(bpf_target_arm64)
extern int CONFIG_ARM64_PAGE_SHIFT __kconfig;
#define KERNEL_PAGE_SHIFT CONFIG_ARM64_PAGE_SHIFT
#else
#define KERNEL_PAGE_SHIFT 12
#endif

static __always_inline __u64 mix64(__u64 value)
{
	value ^= value >> 33;
	value *= GOLDEN_RATIO_64;
	value ^= value >> 29;
	return value;
}

/* Hash of one held lock; XOR-ing them gives an order-independent set hash. */
static __always_inline __u64 held_lock_hash(__u64 lock, __u32 gen, __u8 mode)
{
	return mix64(lock ^ ((__u64)gen << 48) ^ ((__u64)mode << 62));
}

/* Start time of the current process (boot clock, as /proc/PID/stat has it):
 * (pid, start) names a process uniquely. */
static __always_inline __u64 current_process_start(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, group_leader, start_boottime);
}

static __always_inline __u32 current_session_id(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, signal, pids[PIDTYPE_SID], numbers[0].nr);
}

/* The current thread id: a field of the task, cheaper to reach than through
 * bpf_get_current_pid_tgid() (helper calls dominate the hot path). */
static __always_inline gadget_tid current_tid(void)
{
	return bpf_get_current_task_btf()->pid;
}

/* Return address of the lock function: the calling site, even without frame
 * pointers (x86: on top of the stack at entry; arm64: in the link register). */
static __always_inline __u64 caller_address(struct pt_regs *ctx)
{
#if defined(bpf_target_x86)
	__u64 ret = 0;

	bpf_probe_read_user(&ret, sizeof(ret), (void *)PT_REGS_SP(ctx));
	return ret;
#elif defined(bpf_target_arm64)
	return PT_REGS_RET(ctx);
#else
	return 0;
#endif
}

static __always_inline __u64 read_user_word(__u64 address)
{
	__u64 word = 0;

	bpf_probe_read_user(&word, sizeof(word), (void *)address);
	return word;
}

/* The task's id in its own pid namespace (how its process sees it). */
static __always_inline __u32 task_ns_tid(struct task_struct *task)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	__u32 nr = 0;

	bpf_probe_read_kernel(
		&nr, sizeof(nr),
		(void *)pid + bpf_core_field_offset(struct pid, numbers) +
			level * bpf_core_type_size(struct upid) +
			bpf_core_field_offset(struct upid, nr));
	return nr;
}

#endif /* IGDEADLOCK_HELPERS_H */
