// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Processes: exits drop state and tell user space; in the traced tree, forks
 * and execs tell it which C library to probe. Owns dead_pids, process_events
 * and ring_wakeups.
 */

#ifndef IGDEADLOCK_PROCESSES_H
#define IGDEADLOCK_PROCESSES_H

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
#include "helpers.h"
#include "scope.h"
#include "held_locks.h"
#include "lock_identity.h"
#include "python.h"
#include "owners.h"
#include "misuse.h"
#include "futex.h"

#define SIGSTOP 19 /* x86-64 and arm64 */
/* signal_struct.flags: the whole process is exiting */
#define SIGNAL_GROUP_EXIT 0x00000004

struct dead_pid {
	gadget_pid pid;
	__u32 __pad;
	__u64 process_start;
	__u64 exited; /* boot time (ns) of the exit: how long its threads were blocked */
	gadget_mntns_id mntns_id;
	gadget_comm comm[TASK_COMM_LEN];
};

/* A process started a program, or joined the traced tree: user space finds
 * the C library it uses and probes it. */
struct process_event {
	gadget_mntns_id mntns_id;
	__u64 process_start;
	gadget_pid pid;
	gadget_ppid parent_pid;
	__u8 event; /* PROCESS_* */
	__u8 paused; /* stopped (SIGSTOP) until user space continues it */
	__u8 __pad[6];
	gadget_comm comm[TASK_COMM_LEN];
	char exe[EXE_NAME_MAX]; /* the file execve was given (exec events) */
};

GADGET_TRACER_MAP(dead_pids, 1024 * 256);
GADGET_TRACER_MAP(process_events, 1024 * 256);

/* Waking a ring buffer's reader costs more than everything else an exit or
 * an exec does (the kernel raises an interrupt on this CPU: ~11 us in a VM),
 * and a busy host starts and ends thousands of processes a second. These
 * records are therefore written without a wake-up, and one timer per ring
 * wakes its reader at most RING_WAKEUP_DELAY_NS after the first record it has
 * not seen. (A process paused for user space is sent at once.) */
#define RING_WAKEUP_DELAY_NS (10 * 1000 * 1000ULL)

enum batched_ring {
	RING_DEAD_PIDS = 0,
	RING_PROCESS_EVENTS = 1,
	RING_COUNT,
};

struct ring_wakeup {
	struct bpf_timer timer;
	__u64 armed; /* the timer is set and has not fired yet */
	__u64 ready; /* timer initialised and its callback set */
};

/* enum batched_ring -> the timer that wakes that ring's reader */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RING_COUNT);
	__type(key, __u32);
	__type(value, struct ring_wakeup);
} ring_wakeups SEC(".maps");

/* Stop each new process of the traced tree before its first instruction
 * (SIGSTOP), so that user space can probe its C library for it alone and then
 * continue it: uprobes placed per process (bystanders never trap) see a new
 * process from its start. */
const volatile bool pause_new_processes = false;
GADGET_PARAM(pause_new_processes);

extern int bpf_send_signal_task(struct task_struct *task, int sig,
				enum pid_type type, __u64 value) __ksym __weak;

/* A thread that exits while its process goes on, holding locks, leaves them
 * held for good: whoever waits for them next waits forever. (Threads of a
 * process that exits as a whole, or that another thread's exec ends, are not
 * to blame.) */
static __always_inline void report_locks_left(void *ctx, gadget_tid tid,
					      struct task_struct *task)
{
	struct thread_locks *t = thread_state(tid, NULL);
	__u32 nheld;

	if (!t || !t->nheld)
		return;
	if (BPF_CORE_READ(task, signal, live.counter) == 0 ||
	    BPF_CORE_READ(task, signal, flags) & SIGNAL_GROUP_EXIT ||
	    BPF_CORE_READ(task, signal, group_exec_task))
		return;
	forget_released(t, 0);
	nheld = t->nheld;
	for (int i = 0; i < MAX_HELD_LOCKS; i++) {
		if (i >= nheld)
			break;
		send_misuse(ctx, MISUSE_EXIT_HOLDING, t->held[i].lock,
			    t->held[i].gen, t->held[i].kind, t->held[i].mode,
			    t->held[i].mode, 0, t->held[i].site, 0);
	}
}

/* Wake a ring's reader, if it has records to read: an empty record discarded
 * with a forced wake-up (readers skip discarded records). */
static __always_inline void wake_reader(void *ring)
{
	void *record;

	if (!bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA))
		return;
	record = bpf_ringbuf_reserve(ring, sizeof(__u64), 0);
	if (record)
		bpf_ringbuf_discard(record, BPF_RB_FORCE_WAKEUP);
}

static int ring_wakeup_fired(void *map, __u32 *key, struct ring_wakeup *wakeup)
{
	wakeup->armed = 0; /* records from now on set the timer again */
	if (*key == RING_DEAD_PIDS)
		wake_reader(&dead_pids);
	else
		wake_reader(&process_events);
	return 0;
}

/* Send a record of `ring` (whose map is `map`) without waking its reader;
 * make sure its timer will. */
static __always_inline void submit_batched(void *ctx, void *map, __u32 ring,
					   void *record, __u64 size)
{
	struct ring_wakeup *wakeup = bpf_map_lookup_elem(&ring_wakeups, &ring);

	if (!wakeup) {
		gadget_submit_buf(ctx, map, record, size);
		return;
	}
	bpf_ringbuf_submit(record, BPF_RB_NO_WAKEUP);
	if (!wakeup->ready) {
		/* -EBUSY: another CPU initialised it first */
		bpf_timer_init(&wakeup->timer, &ring_wakeups, CLOCK_MONOTONIC);
		bpf_timer_set_callback(&wakeup->timer, ring_wakeup_fired);
		wakeup->ready = 1;
	}
	/* set it once: setting it again would push the wake-up back */
	if (__sync_lock_test_and_set(&wakeup->armed, 1))
		return;
	if (bpf_timer_start(&wakeup->timer, RING_WAKEUP_DELAY_NS, 0)) {
		/* no timer (it could not be set up): wake the reader now */
		wakeup->armed = 0;
		wake_reader(map);
	}
}

/* Thread exit: drop its state; last thread of a process: report the pid. */
static __always_inline int thread_exited(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	gadget_tid tid = (__u32)pid_tgid;
	__u32 pid = pid_tgid >> 32;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct dead_pid *event;
	__u32 *generations;

	/* only a process with lock state has threads with state (claim_slot) */
	generations = lock_process(pid);
	if (generations) {
		report_locks_left(ctx, tid, task);
		release_thread(tid);
		forget_thread_waits(tid);
	}

	/* signal->live drops to 0 when the last thread of the group exits */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (generations) {
		/* only processes that destroyed a lock have generations */
		if (*generations)
			forget_lock_generations(&pid);
		forget_lock_process(&pid);
		forget_python_process(&pid);
	}
	if (current_is_filtered_out())
		return 0;

	event = gadget_reserve_buf(&dead_pids, sizeof(*event));
	if (!event)
		return 0;
	event->pid = pid;
	event->__pad = 0;
	event->process_start = current_process_start();
	event->exited = bpf_ktime_get_boot_ns();
	event->mntns_id = gadget_get_current_mntns_id();
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	submit_batched(ctx, &dead_pids, RING_DEAD_PIDS, event, sizeof(*event));
	if (tree_pid)
		leave_traced_tree(&pid);
	return 0;
}

/* Tell user space about a process whose C library may be new to it. */
static __always_inline void send_process_event(void *ctx,
					       struct task_struct *task,
					       __u8 kind, bool paused,
					       const char *exe)
{
	struct process_event *event;

	event = gadget_reserve_buf(&process_events, sizeof(*event));
	if (!event)
		return;
	__builtin_memset(event, 0, sizeof(*event));
	event->mntns_id = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	event->process_start =
		BPF_CORE_READ(task, group_leader, start_boottime);
	event->pid = BPF_CORE_READ(task, tgid);
	event->parent_pid = BPF_CORE_READ(task, real_parent, tgid);
	event->event = kind;
	event->paused = paused;
	BPF_CORE_READ_STR_INTO(&event->comm, task, comm);
	if (exe)
		bpf_probe_read_kernel_str(event->exe, sizeof(event->exe), exe);
	if (paused) /* it waits for user space: now */
		gadget_submit_buf(ctx, &process_events, event, sizeof(*event));
	else
		submit_batched(ctx, &process_events, RING_PROCESS_EVENTS, event,
			       sizeof(*event));
}

/* A new process whose parent is in the traced tree joins it. */
static __always_inline int process_forked(void *ctx, struct task_struct *parent,
					  struct task_struct *child)
{
	gadget_pid pid = BPF_CORE_READ(child, tgid);
	bool paused;

	if (!tree_pid || BPF_CORE_READ(child, pid) != pid)
		return 0; /* no tree to follow, or a new thread */
	if (!in_traced_tree(BPF_CORE_READ(parent, tgid)))
		return 0;
	if (join_traced_tree(pid)) {
		count_stat(STAT_TREE_FULL);
		return 0;
	}
	/* a vfork child runs only until its exec, which pauses it */
	paused = pause_new_processes && !BPF_CORE_READ(child, vfork_done) &&
		 bpf_send_signal_task &&
		 !bpf_send_signal_task(child, SIGSTOP, PIDTYPE_TGID, 0);
	send_process_event(ctx, child, PROCESS_FORK, paused, NULL);
	return 0;
}

/* A process started another program, perhaps on another C library: the lock
 * state of the thread that ran the exec (`old_tid` before it, the process id
 * after) belongs to the old program. */
static __always_inline int process_executed(void *ctx, struct task_struct *task,
					    gadget_tid old_tid,
					    struct linux_binprm *bprm)
{
	bool paused;

	release_thread(old_tid);
	if (task->pid != old_tid)
		release_thread(task->pid);
	/* no library to probe when only hangs are diagnosed */
	if (hangs_only || current_is_filtered_out())
		return 0;
	paused = pause_new_processes && tree_pid && !bpf_send_signal(SIGSTOP);
	send_process_event(ctx, task, PROCESS_EXEC, paused,
			   BPF_CORE_READ(bprm, filename));
	return 0;
}

#endif /* IGDEADLOCK_PROCESSES_H */
