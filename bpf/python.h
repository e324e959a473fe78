// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Python stacks: a CPython process's interpreter frames at a new site, and
 * what names their code objects. Owns python_processes, python_codes and
 * seen_python_codes.
 */

#ifndef IGDEADLOCK_PYTHON_H
#define IGDEADLOCK_PYTHON_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include <gadget/buffer.h>
#include <gadget/filter.h>
#include <gadget/macros.h>
#include <gadget/types.h>

#include "sizes.h"
#include "helpers.h"
#include "held_locks.h"
#include "records.h"

/* (process, code object) -> its names and line table, new since the last fetch */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_PYTHON_CODES);
	__type(key, struct python_code_key);
	__type(value, struct python_code);
} python_codes SEC(".maps");

/* (process, code object) -> 1 once sent */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SEEN_PYTHON_CODES);
	__type(key, struct python_code_key);
	__type(value, __u8);
} seen_python_codes SEC(".maps");

/* CPython process -> where its frames are */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PYTHON_PROCESSES);
	__type(key, gadget_pid);
	__type(value, struct python_layout);
} python_processes SEC(".maps");

/* A CPython process's layout must not outlive it (a reused pid). */
static __always_inline void forget_python_process(gadget_pid *pid)
{
	bpf_map_delete_elem(&python_processes, pid);
}

/* bpf_loop hands its callback a pointer to the stack: the search itself is
 * in scratch space */
struct python_search_step {
	const struct python_layout *layout;
	struct python_thread_search *search;
};

/* One bpf_loop step: is this thread state the current thread's? */
static long python_thread_is_current(__u32 index,
				     struct python_search_step *step)
{
	const struct python_layout *layout = step->layout;
	struct python_thread_search *search = step->search;

	if (!search->state)
		return 1;
	if (read_user_word(search->state + layout->native_thread_id) ==
	    search->tid) {
		search->found = 1;
		return 1;
	}
	search->state = read_user_word(search->state + layout->tstate_next);
	return 0;
}

/* An ASCII string object's characters into `out` (empty if not ASCII). */
static __always_inline void read_python_name(const struct python_layout *layout,
					     __u64 string, char *out)
{
	__u32 state = 0;

	out[0] = '\0';
	bpf_probe_read_user(&state, sizeof(state),
			    (void *)(string + layout->unicode_state));
	if ((state & PY_UNICODE_COMPACT_ASCII) != PY_UNICODE_COMPACT_ASCII)
		return;
	bpf_probe_read_user_str(out, PYTHON_NAME_MAX,
				(void *)(string + layout->ascii_data));
}

/* Send what names a code object, the first time one of its frames is seen
 * (`key` and `named` are scratch space: the stack is kept small). */
static __always_inline void send_python_code(const struct python_layout *layout,
					     struct python_code_key *key,
					     struct python_code *named)
{
	__u64 code = key->code;
	__u64 table;
	__u64 size;

	if (bpf_map_lookup_elem(&seen_python_codes, key))
		return;
	named->first_line = 0;
	bpf_probe_read_user(&named->first_line, sizeof(named->first_line),
			    (void *)(code + layout->co_firstlineno));
	read_python_name(layout, read_user_word(code + layout->co_filename),
			 named->filename);
	read_python_name(layout, read_user_word(code + layout->co_qualname),
			 named->qualname);
	table = read_user_word(code + layout->co_linetable);
	size = read_user_word(table + layout->bytes_size);
	if (size > PYTHON_LINETABLE_MAX)
		size = PYTHON_LINETABLE_MAX;
	named->linetable_size = size;
	if (size)
		bpf_probe_read_user(named->linetable,
				    size & (PYTHON_LINETABLE_MAX - 1) ?:
					    PYTHON_LINETABLE_MAX,
				    (void *)(table + layout->bytes_data));
	if (!bpf_map_update_elem(&python_codes, key, named, BPF_NOEXIST))
		bpf_map_update_elem(&seen_python_codes, key, &(__u8){ 1 },
				    BPF_ANY);
}

struct python_frame_walk {
	const struct python_layout *layout;
	struct scratch_buffers *s;
	__u64 frame; /* the next frame to record */
	gadget_pid pid;
};

/* One bpf_loop step of the frame walk: record a frame, go to its caller. */
static long python_frame_step(__u32 index, struct python_frame_walk *walk)
{
	const struct python_layout *layout = walk->layout;
	struct python_frames *stack = &walk->s->python;
	__u64 code, instr;
	__u32 n = stack->python_frame_count;

	if (!walk->frame || n >= MAX_PYTHON_FRAMES)
		return 1;
	code = read_user_word(walk->frame + layout->frame_code);
	instr = read_user_word(walk->frame + layout->frame_prev_instr);
	if (code) {
		walk->s->python_key.pid = walk->pid;
		walk->s->python_key.code = code;
		send_python_code(layout, &walk->s->python_key,
				 &walk->s->python_code);
		stack->python_code[n & (MAX_PYTHON_FRAMES - 1)] = code;
		/* code units of 2 bytes from the first instruction */
		stack->python_instr[n & (MAX_PYTHON_FRAMES - 1)] =
			(instr - code - layout->code_adaptive) / 2;
		stack->python_frame_count = n + 1;
	}
	walk->frame = read_user_word(walk->frame + layout->frame_previous);
	return 0;
}

/*
 * The current thread's Python frames, if its process is CPython (CPython
 * 3.11's layout: thread state -> _PyCFrame -> _PyInterpreterFrame chain). The
 * thread that holds the GIL is _PyRuntime's tstate_current; a thread that
 * released it to wait is found in the interpreter's list of thread states.
 * A global function: verified once, its own stack.
 */
__noinline int capture_python_frames(void)
{
	gadget_pid pid = bpf_get_current_pid_tgid() >> 32;
	const struct python_layout *layout;
	struct python_thread_search *search;
	struct python_search_step step;
	struct python_frame_walk walk;
	struct python_frames *stack;
	struct scratch_buffers *s;
	__u64 interp;

	s = scratch();
	if (!s)
		return 0;
	stack = &s->python;
	stack->python_frame_count = 0;
	layout = bpf_map_lookup_elem(&python_processes, &pid);
	if (!layout)
		return 0;
	search = &s->python_search;
	search->found = 0;
	search->tid = current_ns_tid();
	search->state =
		read_user_word(layout->runtime + layout->tstate_current);
	if (!search->state ||
	    read_user_word(search->state + layout->native_thread_id) !=
		    search->tid) {
		interp = read_user_word(layout->runtime +
					layout->interpreters_head);
		search->state =
			interp ? read_user_word(interp + layout->threads_head) :
				 0;
		step.layout = layout;
		step.search = search;
		bpf_loop(MAX_PYTHON_THREADS, python_thread_is_current, &step,
			 0);
		if (!search->found)
			return 0;
	}
	walk.layout = layout;
	walk.s = s;
	walk.pid = pid;
	walk.frame =
		read_user_word(read_user_word(search->state + layout->cframe) +
			       layout->current_frame);
	bpf_loop(MAX_PYTHON_FRAMES, python_frame_step, &walk, 0);
	return 0;
}

#endif /* IGDEADLOCK_PYTHON_H */
