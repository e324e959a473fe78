// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Records: the structs user space reads, and the per-CPU scratch space that
 * records too big for the BPF stack are built in. Owns scratch_space.
 */

#ifndef IGDEADLOCK_RECORDS_H
#define IGDEADLOCK_RECORDS_H

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

struct lock_edge_key {
	__u64 from_lock; /* held lock */
	__u64 to_lock; /* requested lock */
	__u64 context; /* hash of the held set: one record per lock set */
	gadget_pid pid;
	gadget_tid tid;
	__u8 to_mode;
	__u8 to_how;
	__u8 __pad[6];
};

struct lock_edge {
	gadget_mntns_id mntns_id;
	__u64 process_start; /* tells a reused pid apart */
	__u32 session_id; /* selects a command's process tree */
	__u32 __pad0;
	__u64 from_site; /* stackmap key: where from_lock was acquired */
	__u64 to_site; /* stackmap key: where to_lock was requested */
	__u32 from_gen;
	__u32 to_gen;
	__u8 from_mode;
	__u8 from_kind;
	__u8 to_kind;
	__u8 held_count;
	__u32 __pad;
	gadget_comm comm[TASK_COMM_LEN];
	/* every lock held when the edge was made (from_lock included) */
	__u64 held_locks[MAX_RECORDED_HELD];
	__u32 held_gens[MAX_RECORDED_HELD];
	__u8 held_modes[MAX_RECORDED_HELD];
};

struct stack_key {
	__u64 site;
};

/* A CPython process's Python frames at a site, innermost first: each code
 * object and the instruction it was at (user space reads their files,
 * functions and lines from the running process). */
struct python_frames {
	__u32 python_frame_count;
	__u32 __pad;
	__u64 python_code[MAX_PYTHON_FRAMES];
	__u32 python_instr[MAX_PYTHON_FRAMES];
};

/* Looking for the current thread among a CPython interpreter's thread states. */
struct python_thread_search {
	__u64 state; /* the thread state being looked at, then the one found */
	__u64 tid; /* the current thread as CPython numbers it */
	__u64 found;
};

struct stack_frames {
	gadget_pid stack_pid;
	__u32 frame_count;
	/* per frame: offset in the mapped file, or the address if anonymous */
	__u64 frame_offsets[MAX_STACK_FRAMES];
	/* per frame: file_id of the mapped file, 0 if anonymous */
	__u64 frame_files[MAX_STACK_FRAMES];
	/* per frame: the address itself (a frame the VMA lookup missed, under
	 * mmap_lock contention, is resolved from another stack with it) */
	__u64 frame_addresses[MAX_STACK_FRAMES];
	struct python_frames python;
};

/* Where a CPython process keeps its threads' frames (set by the client, which
 * knows the interpreter's version and where its _PyRuntime is). */
struct python_layout {
	__u64 runtime; /* address of _PyRuntime in the process */
	__u16 interpreters_head; /* _PyRuntimeState.interpreters.head */
	__u16 tstate_current; /* _PyRuntimeState.gilstate.tstate_current */
	__u16 threads_head; /* PyInterpreterState.threads.head */
	__u16 tstate_next; /* PyThreadState.next */
	__u16 native_thread_id; /* PyThreadState.native_thread_id */
	__u16 cframe; /* PyThreadState.cframe */
	__u16 current_frame; /* _PyCFrame.current_frame */
	__u16 frame_code; /* _PyInterpreterFrame.f_code */
	__u16 frame_previous; /* _PyInterpreterFrame.previous */
	__u16 frame_prev_instr; /* _PyInterpreterFrame.prev_instr */
	__u16 code_adaptive; /* PyCodeObject.co_code_adaptive: instruction 0 */
	/* what naming a code object reads (python_codes) */
	__u16 co_filename; /* PyCodeObject.co_filename */
	__u16 co_qualname; /* PyCodeObject.co_qualname */
	__u16 co_firstlineno; /* PyCodeObject.co_firstlineno */
	__u16 co_linetable; /* PyCodeObject.co_linetable */
	__u16 ascii_data; /* sizeof(PyASCIIObject): a compact ASCII string's characters */
	__u16 unicode_state; /* PyASCIIObject.state */
	__u16 bytes_size; /* PyVarObject.ob_size */
	__u16 bytes_data; /* PyBytesObject.ob_sval */
	__u16 __pad;
};

struct python_code_key {
	gadget_pid pid;
	__u32 __pad;
	__u64 code; /* address of the code object */
};

/* What names a code object: read while the process runs, so that a report
 * made after it exited still names its Python frames. */
struct python_code {
	__s32 first_line; /* co_firstlineno */
	__u32 linetable_size; /* bytes of co_linetable copied */
	char filename[PYTHON_NAME_MAX]; /* co_filename, if ASCII (else empty) */
	char qualname[PYTHON_NAME_MAX]; /* co_qualname, if ASCII */
	__u8 linetable[PYTHON_LINETABLE_MAX]; /* the start of co_linetable */
};

struct file_key {
	__u64 file_id;
};

struct file_info {
	__u64 inode;
	__u32 device;
	__u32 __pad;
	char path[FILE_PATH_MAX];
};

struct blocked_key {
	gadget_tid tid;
};

struct blocked_thread {
	gadget_mntns_id mntns_id;
	__u64 process_start;
	__u64 lock; /* the lock the thread waits for (the futex word: kind futex) */
	__u64 site; /* stackmap key of where it requested the lock, 0 if none */
	__u64 since; /* boot time (ns) it started waiting */
	__u64 observed; /* boot time (ns) of the wait that made this record */
	gadget_pid pid;
	__u32 gen;
	__u32 owner_tid; /* glibc's owner of the lock (mutex, rwlock writer), 0 if none */
	__u32 session_id;
	__u8 mode;
	__u8 kind;
	__u8 how;
	__u8 held_count;
	__u32 process_threads; /* threads its process had when the wait began */
	gadget_comm comm[TASK_COMM_LEN];
	/* the locks the thread holds while it waits */
	__u64 held_locks[MAX_RECORDED_HELD];
	__u32 held_gens[MAX_RECORDED_HELD];
	__u8 held_modes[MAX_RECORDED_HELD];
	/* a futex wait outside the lock functions: the user stack's return
	 * addresses (resolved by user space while the process hangs) */
	__u32 wait_frame_count;
	__u32 __pad2;
	__u64 wait_frames[MAX_STACK_FRAMES];
};

/* Walking a file's path upwards: dentries, crossing mount points. */
struct path_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *parts[MAX_PATH_PARTS]; /* leaf first */
	__u32 count;
};

/* scratch space for records and buffers too big for the BPF stack (512
 * bytes for a whole call chain: the stack holds small things only) */
struct scratch_buffers {
	struct lock_edge_key edge_key;
	struct lock_edge edge;
	struct blocked_thread blocked;
	struct stack_frames stack;
	struct file_info file;
	__u64 raw_frames[MAX_STACK_FRAMES + 1];
	char path[2 * FILE_PATH_MAX];
	struct path_walk walk;
	/* per frame of `stack`: the mapped file (a struct file *), 0 if none */
	__u64 frame_file_pointers[MAX_STACK_FRAMES];
	/* the Python frames capture_python_frames found, for capture_stack */
	struct python_frames python;
	struct python_code python_code;
	struct python_code_key python_key;
	struct python_thread_search python_search;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch_buffers);
} scratch_space SEC(".maps");

/* This CPU's scratch space (NULL only if the map is gone). */
static __always_inline struct scratch_buffers *scratch(void)
{
	return bpf_map_lookup_elem(&scratch_space, &(__u32){ 0 });
}

#endif /* IGDEADLOCK_RECORDS_H */
