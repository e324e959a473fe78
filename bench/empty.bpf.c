// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The floor for `make bench`: programs that do nothing, attached to the same
 * lock functions as the gadget. */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>

SEC("uprobe")
int bench_empty_lock(void *ctx)
{
	return 0;
}

SEC("uprobe")
int bench_empty_unlock(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
