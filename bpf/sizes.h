// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Sizes: map capacities and nesting depths, named once for every header. Owns
 * no map.
 */

#ifndef IGDEADLOCK_SIZES_H
#define IGDEADLOCK_SIZES_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

#define MAX_HELD_LOCKS 64 /* nesting depth tracked per thread (power of 2) */
/* held locks a record carries (the first ones: gate locks are taken early) */
#define MAX_RECORDED_HELD 16
#define DEP_CACHE_SETS \
	8 /* dependency-cache sets: one per nesting depth, modulo (power of 2) */
#define DEP_CACHE_WAYS 2 /* requests a set keeps at once */
#define DEP_CACHE_ENTRIES (DEP_CACHE_SETS * DEP_CACHE_WAYS)
#define MAX_STACK_FRAMES 16 /* user frames kept per acquisition site */
#define MAX_KERNEL_FRAMES \
	8 /* kernel frames of a waiting thread in a snapshot */
#define MAX_PYTHON_FRAMES \
	8 /* Python frames kept per site of a CPython process */
#define MAX_PYTHON_THREADS 64 /* thread states walked to find the current one */
#define MAX_PYTHON_PROCESSES 1024
#define MAX_PYTHON_CODES 4096 /* new code objects between two fetches */
#define MAX_SEEN_PYTHON_CODES 65536
#define PYTHON_NAME_MAX 64 /* longest file or function name kept */
#define PYTHON_LINETABLE_MAX 256 /* line-table bytes kept (power of 2) */
/* PyASCIIObject.state: the string is compact and ASCII */
#define PY_UNICODE_COMPACT_ASCII 0x60
#define FILE_PATH_MAX 256 /* longest mapped-file path reported (power of 2) */
#define MAX_PATH_PARTS 32 /* directory levels walked for a path (power of 2) */

#define MAX_THREADS 16384 /* power of 2: slots are picked by masking */
#define THREAD_SLOT_PROBES 8 /* slots tried for a new thread */
#define MAX_KNOWN_DEPS 131072 /* dependencies remembered (LRU) */
/* New edges and stacks between two fetches. These two maps are allocated as
 * they fill (BPF_F_NO_PREALLOC) and drained by every fetch: the sizes bound a
 * burst, not the memory they use at rest. */
#define MAX_EDGES 131072
#define MAX_SITES 131072
#define MAX_FILES 1024 /* new mapped files between two fetches */
#define MAX_SEEN_FILES 4096
#define MAX_LOCK_GENERATIONS 16384
#define MAX_BLOCKED_THREADS 4096
#define MAX_HOLDERS 16384 /* held locks that any thread may release */
#define MAX_UNTRACED_WAITS \
	4096 /* (process, wait site) pairs of untraced waits */
#define MAX_COUNTING_SEMAPHORES 4096 /* semaphores found to be no locks */
#define MAX_COUNTERS 4096 /* (counter, process) pairs between two fetches */

#define MAX_TREE_PROCESSES 16384 /* processes of a traced command's tree */
#define MAX_IGNORED_PROCESSES 64 /* igdeadlock's own processes, never traced */
#define MAX_LOCK_PROCESSES 16384 /* processes with lock state at once */
#define EXE_NAME_MAX 128 /* longest executable name in process events */

#define LOCK_CALL_RANGES \
	2 /* musl nests lock functions two deep (lock, timedlock, trylock) */

#endif /* IGDEADLOCK_SIZES_H */
