// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The smallest useful gadget: one event per exec, from the sched_process_exec
 * tracepoint (no kprobes, no uprobes). tools/cluster/cluster.sh runs it with
 * `kubectl gadget run` to show that gadget pods load and run gadget images
 * from the cluster's registry. */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

struct event {
	gadget_mntns_id mntns_id;
	gadget_pid pid;
	gadget_comm comm[TASK_COMM_LEN];
};

GADGET_TRACER_MAP(events, 1024 * 64);
GADGET_TRACER(exec, events, event);

SEC("tracepoint/sched/sched_process_exec")
int cluster_check_exec(void *ctx)
{
	struct event *event;

	if (gadget_should_discard_data_current())
		return 0;
	event = gadget_reserve_buf(&events, sizeof(*event));
	if (!event)
		return 0;
	event->mntns_id = gadget_get_current_mntns_id();
	event->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	gadget_submit_buf(ctx, &events, event, sizeof(*event));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
