// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * The blocked-thread snapshot: a task iterator that lists every thread in
 * scope that sits in a futex wait now, read from the kernel alone (no probe,
 * nothing traced before): its futex word, how long it has not run, its
 * kernel stack and its user registers (of a traced command's tree only, when
 * one is traced). Owns no map.
 */

#ifndef IGDEADLOCK_SNAPSHOT_H
#define IGDEADLOCK_SNAPSHOT_H

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
#include "scope.h"
#include "futex.h"

/* The system calls a thread waits for a futex in (the generic table's
 * numbers on arm64). restart_syscall: a timed futex wait interrupted by a
 * signal (a stop) resumes there, its word in the task's restart_block. */
#if defined(bpf_target_x86)
#define NR_FUTEX 202
#define NR_RESTART_SYSCALL 219
#define NR_FUTEX_WAITV 449
#elif defined(bpf_target_arm64)
#define NR_FUTEX 98
#define NR_RESTART_SYSCALL 128
#define NR_FUTEX_WAITV 449
#endif

#define PF_KTHREAD 0x00200000 /* task_struct.flags: a kernel thread */
#define SAVED_REGISTERS 6 /* callee-saved user registers a record keeps */
/* task_struct.__state: asleep, woken by a signal or not */
#define TASK_INTERRUPTIBLE 0x1
#define TASK_UNINTERRUPTIBLE 0x2
/* rt_mutex_base.owner: the owning task, its low bit a flag */
#define RT_MUTEX_OWNER_MASK (~1UL)
/* futex_restart.flags: the restarted wait has a deadline */
#define FLAGS_HAS_TIMEOUT 0x4

struct waiting_thread {
	gadget_mntns_id mntns_id;
	__u64 process_start;
	/* the futex word it waits on (futex_waitv: the address of its array
	 * of waits, which user space reads) */
	__u64 futex;
	__u64 last_ran; /* scheduler clock (ns) it last started to run */
	/* its context switches so far: the same in two snapshots, it has not
	 * run in between (it waited all along) */
	__u64 switches;
	__u64 since; /* boot time (ns) it has waited since, about (0: unknown) */
	__u64 observed; /* boot time (ns) of the snapshot */
	/* its user registers in the system call: where it waits, and where
	 * user space walks its stack from */
	__u64 user_pc;
	__u64 user_sp;
	__u64 user_fp;
	/* its callee-saved registers (x86-64: rbx, rbp, r12-r15; arm64:
	 * x19-x24): a lock function keeps the lock it works on in one */
	__u64 user_saved[SAVED_REGISTERS];
	gadget_pid pid;
	gadget_tid tid;
	__u32 ns_tid; /* its id in its own pid namespace: C libraries record owners by it */
	__u32 op; /* the futex command (FUTEX_WAIT...), with its flags */
	__u32 value; /* the word's value the wait expects (robust, PI and musl owners keep a thread id there) */
	__u32 owner_tid; /* a PI futex's owner, as the kernel knows it (0: none known) */
	__u32 process_threads; /* threads of its process */
	__u8 call; /* enum snapshot_call */
	__u8 timed; /* the wait has a deadline */
	__u8 kernel_frame_count;
	__u8 __pad;
	gadget_comm comm[TASK_COMM_LEN];
	__u64 kernel_frames[MAX_KERNEL_FRAMES];
};

/* Asleep in the kernel (not running, not about to). */
static __always_inline bool task_sleeps(struct task_struct *task)
{
	unsigned int state = BPF_CORE_READ(task, __state);

	return state & (TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE);
}

/* The system call a task is in, and its first four arguments. */
static __always_inline long task_syscall(struct pt_regs *regs, __u64 *args)
{
#if defined(bpf_target_x86)
	args[0] = BPF_CORE_READ(regs, di);
	args[1] = BPF_CORE_READ(regs, si);
	args[2] = BPF_CORE_READ(regs, dx);
	args[3] = BPF_CORE_READ(regs, r10);
	return BPF_CORE_READ(regs, orig_ax);
#elif defined(bpf_target_arm64)
	args[0] = BPF_CORE_READ((struct user_pt_regs *)regs, regs[0]);
	args[1] = BPF_CORE_READ((struct user_pt_regs *)regs, regs[1]);
	args[2] = BPF_CORE_READ((struct user_pt_regs *)regs, regs[2]);
	args[3] = BPF_CORE_READ((struct user_pt_regs *)regs, regs[3]);
	return BPF_CORE_READ(regs, syscallno);
#else
	return -1;
#endif
}

/* The user registers a blocked task entered the kernel with. */
static __always_inline void task_user_registers(struct pt_regs *regs,
						struct waiting_thread *w)
{
#if defined(bpf_target_x86)
	w->user_pc = BPF_CORE_READ(regs, ip);
	w->user_sp = BPF_CORE_READ(regs, sp);
	w->user_fp = BPF_CORE_READ(regs, bp);
	w->user_saved[0] = BPF_CORE_READ(regs, bx);
	w->user_saved[1] = BPF_CORE_READ(regs, bp);
	w->user_saved[2] = BPF_CORE_READ(regs, r12);
	w->user_saved[3] = BPF_CORE_READ(regs, r13);
	w->user_saved[4] = BPF_CORE_READ(regs, r14);
	w->user_saved[5] = BPF_CORE_READ(regs, r15);
#elif defined(bpf_target_arm64)
	w->user_pc = BPF_CORE_READ((struct user_pt_regs *)regs, pc);
	w->user_sp = BPF_CORE_READ((struct user_pt_regs *)regs, sp);
	w->user_fp = BPF_CORE_READ((struct user_pt_regs *)regs, regs[29]);
	for (int i = 0; i < SAVED_REGISTERS; i++)
		w->user_saved[i] = BPF_CORE_READ((struct user_pt_regs *)regs,
						 regs[19 + i]);
#endif
}

/* The owner of the PI futex a task waits for: the kernel knows it (the
 * rt_mutex the task is blocked on). 0 if it waits for none. */
static __always_inline __u32 pi_owner(struct task_struct *task)
{
	struct rt_mutex_waiter *waiter = BPF_CORE_READ(task, pi_blocked_on);
	struct task_struct *owner;

	if (!waiter || !bpf_core_type_exists(struct rt_mutex_base))
		return 0;
	owner = (void *)((unsigned long)BPF_CORE_READ(waiter, lock, owner) &
			 RT_MUTEX_OWNER_MASK);
	return owner ? BPF_CORE_READ(owner, pid) : 0;
}

/*
 * What `task` waits for, into `w`: false if it is in no futex wait. The
 * word comes from its system call's arguments, or from its restart block
 * when a signal interrupted a timed wait.
 */
static __always_inline bool futex_wait_of(struct task_struct *task,
					  struct waiting_thread *w)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	__u64 args[4] = {};
	long nr;

	if (!regs)
		return false;
	nr = task_syscall(regs, args);
	if (nr == NR_FUTEX) {
		w->call = SNAPSHOT_FUTEX;
		w->futex = args[0];
		w->op = args[1];
		w->value = args[2];
		/* only these two take a deadline in the fourth argument */
		w->timed = args[3] &&
			   ((args[1] & FUTEX_CMD_MASK) == FUTEX_WAIT ||
			    (args[1] & FUTEX_CMD_MASK) == FUTEX_WAIT_BITSET ||
			    (args[1] & FUTEX_CMD_MASK) == FUTEX_LOCK_PI ||
			    (args[1] & FUTEX_CMD_MASK) == FUTEX_LOCK_PI2);
		return is_futex_wait(args[1]);
	}
	if (nr == NR_FUTEX_WAITV) {
		w->call = SNAPSHOT_FUTEX_WAITV;
		w->futex = args[0];
		w->timed = args[3] != 0;
		return true;
	}
	if (nr == NR_RESTART_SYSCALL &&
	    bpf_core_field_exists(task->restart_block.futex)) {
		w->futex =
			(__u64)BPF_CORE_READ(task, restart_block.futex.uaddr);
		if (!w->futex)
			return false;
		w->call = SNAPSHOT_FUTEX_RESTART;
		w->op = FUTEX_WAIT_BITSET;
		w->value = BPF_CORE_READ(task, restart_block.futex.val);
		w->timed = !!(BPF_CORE_READ(task, restart_block.futex.flags) &
			      FLAGS_HAS_TIMEOUT);
		return true;
	}
	return false;
}

/* When the task last ran, and so about since when it waits: the scheduler
 * stamps each arrival on a CPU (CONFIG_SCHED_INFO), in its clock, which
 * counts like the monotonic one. False if it arrived after the snapshot
 * began: woken meanwhile, it runs, and waits for nothing. */
static __always_inline bool wait_times(struct task_struct *task,
				       struct waiting_thread *w)
{
	__u64 now = bpf_ktime_get_ns(), ran = 0;

	w->observed = bpf_ktime_get_boot_ns();
	w->switches = BPF_CORE_READ(task, nvcsw) + BPF_CORE_READ(task, nivcsw);
	if (bpf_core_field_exists(task->sched_info.last_arrival))
		ran = BPF_CORE_READ(task, sched_info.last_arrival);
	if (ran > now)
		return false;
	w->last_ran = ran;
	if (ran && now - ran <= w->observed)
		w->since = w->observed - (now - ran);
	return true;
}

/* One thread of the iteration: written out if it waits on a futex. */
static __always_inline int snapshot_thread(struct seq_file *seq,
					   struct task_struct *task)
{
	struct waiting_thread w = {};
	long bytes;

	if (BPF_CORE_READ(task, flags) & PF_KTHREAD || !task_sleeps(task))
		return 0;
	w.mntns_id = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	w.pid = BPF_CORE_READ(task, tgid);
	/* a traced command's snapshot: its tree only */
	if (tree_pid && !in_traced_tree(w.pid))
		return 0;
	w.tid = BPF_CORE_READ(task, pid);
	BPF_CORE_READ_STR_INTO(&w.comm, task, comm);
	if (gadget_should_discard_data(w.mntns_id, w.pid, w.tid, w.comm,
				       BPF_CORE_READ(task, cred, uid.val),
				       BPF_CORE_READ(task, cred, gid.val)))
		return 0;
	if (!futex_wait_of(task, &w))
		return 0;
	w.process_start = BPF_CORE_READ(task, group_leader, start_boottime);
	w.ns_tid = task_ns_tid(task);
	w.owner_tid = pi_owner(task);
	w.process_threads = BPF_CORE_READ(task, signal, nr_threads);
	task_user_registers((struct pt_regs *)bpf_task_pt_regs(task), &w);
	if (!wait_times(task, &w))
		return 0;
	bytes = bpf_get_task_stack(task, w.kernel_frames,
				   sizeof(w.kernel_frames), 0);
	w.kernel_frame_count = bytes > 0 ? bytes / sizeof(__u64) : 0;
	/* still asleep now that all is read: its record is one of a wait */
	if (!task_sleeps(task))
		return 0;
	bpf_seq_write(seq, &w, sizeof(w));
	return 0;
}

#endif /* IGDEADLOCK_SNAPSHOT_H */
