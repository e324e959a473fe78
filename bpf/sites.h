// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Copyright (c) 2026 The igdeadlock authors */

/*
 * Acquisition sites: a new dependency's user stack, each frame resolved to
 * (file, offset), each file's path sent once. Owns stackmap, files, seen_files
 * and site_counter.
 */

#ifndef IGDEADLOCK_SITES_H
#define IGDEADLOCK_SITES_H

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
#include "counters.h"
#include "records.h"
#include "python.h"

/* acquisition site -> its user stack, resolved to (file, offset) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_SITES);
	__type(key, struct stack_key);
	__type(value, struct stack_frames);
} stackmap SEC(".maps");

/* file_id -> path of a file that stack frames point into */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FILES);
	__type(key, struct file_key);
	__type(value, struct file_info);
} files SEC(".maps");

/* file_id -> 1 once its path was sent */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SEEN_FILES);
	__type(key, __u64);
	__type(value, __u8);
} seen_files SEC(".maps");

/* per CPU: acquisition sites numbered so far */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} site_counter SEC(".maps");

struct vma_lookup {
	__u64 address;
	__u64 offset;
	__u64 file_id;
	struct file *file;
};

static long resolve_vma(struct task_struct *task, struct vm_area_struct *vma,
			struct vma_lookup *lookup)
{
	struct file *file = BPF_CORE_READ(vma, vm_file);
	__u64 inode, device;

	if (!file)
		return 0;
	inode = BPF_CORE_READ(file, f_inode, i_ino);
	device = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	lookup->offset = lookup->address - BPF_CORE_READ(vma, vm_start) +
			 (BPF_CORE_READ(vma, vm_pgoff) << KERNEL_PAGE_SHIFT);
	lookup->file_id = mix64(inode ^ (device << 40)) | 1;
	lookup->file = file;
	return 0;
}

static __always_inline struct mount *mount_of(struct vfsmount *vfsmnt)
{
	return (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
}

/* What both steps of a path walk use: bpf_loop hands its callbacks a pointer
 * to the stack, so the walk itself (in scratch space) is reached from here. */
struct path_writer {
	struct path_walk *walk;
	char *buf; /* 2 * FILE_PATH_MAX bytes */
	__u32 length;
};

/* One bpf_loop step: record a path component or climb to the parent mount. */
static long collect_path_part(__u32 index, struct path_writer *w)
{
	struct path_walk *walk = w->walk;
	struct dentry *dentry = walk->dentry;
	struct vfsmount *vfsmnt = walk->vfsmnt;
	struct mount *mnt = walk->mnt, *up;
	struct dentry *root = BPF_CORE_READ(vfsmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

	if (dentry == root || dentry == parent) {
		up = BPF_CORE_READ(mnt, mnt_parent);
		if (dentry != root || up == mnt)
			return 1; /* the root of everything */
		walk->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		walk->mnt = up;
		walk->vfsmnt =
			(void *)up + bpf_core_field_offset(struct mount, mnt);
		return 0;
	}
	if (walk->count >= MAX_PATH_PARTS)
		return 1;
	walk->parts[walk->count & (MAX_PATH_PARTS - 1)] = dentry;
	walk->count++;
	walk->dentry = parent;
	return 0;
}

/* One bpf_loop step: append "/name" for the next component, root first. */
static long append_path_part(__u32 index, struct path_writer *w)
{
	__u32 count = w->walk->count;
	struct dentry *dentry;
	const unsigned char *name;
	long copied;

	if (index >= count || w->length >= FILE_PATH_MAX - 1)
		return 1;
	dentry = w->walk->parts[(count - 1 - index) & (MAX_PATH_PARTS - 1)];
	name = BPF_CORE_READ(dentry, d_name.name);
	w->buf[w->length & (FILE_PATH_MAX - 1)] = '/';
	w->length++;
	copied = bpf_probe_read_kernel_str(
		&w->buf[w->length & (FILE_PATH_MAX - 1)], FILE_PATH_MAX, name);
	if (copied > 1)
		w->length += copied - 1;
	return 0;
}

/* Path of a mapped file as its process sees it (bounded, best effort), with
 * `walk` and `buf` as scratch space. */
static __always_inline void
read_file_path(struct file *file, struct path_walk *walk, char *buf, char *out)
{
	struct path_writer writer = { .walk = walk, .buf = buf };

	walk->dentry = BPF_CORE_READ(file, f_path.dentry);
	walk->vfsmnt = BPF_CORE_READ(file, f_path.mnt);
	walk->mnt = mount_of(walk->vfsmnt);
	walk->count = 0;
	bpf_loop(2 * MAX_PATH_PARTS, collect_path_part, &writer, 0);
	bpf_loop(MAX_PATH_PARTS, append_path_part, &writer, 0);
	if (writer.length > FILE_PATH_MAX - 1)
		writer.length = FILE_PATH_MAX - 1;
	buf[writer.length & (FILE_PATH_MAX - 1)] = '\0';
	bpf_probe_read_kernel(out, FILE_PATH_MAX, buf);
	out[FILE_PATH_MAX - 1] = '\0';
}

/* Send the path of a mapped file the first time a frame points into it.
 * A global function: the verifier checks it once, not at every call. */
__noinline int send_file_path(__u64 file_id, __u64 file_pointer)
{
	struct file *file = (struct file *)file_pointer;
	struct scratch_buffers *s;
	struct file_key key = { .file_id = file_id };

	if (bpf_map_lookup_elem(&seen_files, &file_id))
		return 0;
	s = scratch();
	if (!s)
		return 0;
	__builtin_memset(&s->file, 0, sizeof(s->file));
	s->file.inode = BPF_CORE_READ(file, f_inode, i_ino);
	s->file.device = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	read_file_path(file, &s->walk, s->path, s->file.path);
	if (!bpf_map_update_elem(&files, &key, &s->file, BPF_ANY))
		bpf_map_update_elem(&seen_files, &file_id, &(__u8){ 1 },
				    BPF_ANY);
	return 0;
}

/* A new site id, unique without atomics: CPU number above a per-CPU count.
 * 0 means "no stack". */
static __always_inline __u64 new_site_id(void)
{
	__u64 *count = bpf_map_lookup_elem(&site_counter, &(__u32){ 0 });

	if (!count)
		return 0;
	*count += 1;
	return ((__u64)bpf_get_smp_processor_id() << SITE_CPU_SHIFT) | *count;
}

/*
 * Capture the user stack of the current acquisition under a new site id.
 * At a function-entry probe the first frame is the lock function itself and
 * frame-pointer unwinding skips its caller, so the caller is put in its place.
 * The files the frames point into are left in scratch space for
 * send_stack_files: called from here, its frame would sit on this one.
 */
static __noinline __u64 capture_stack(struct pt_regs *ctx, bool at_entry,
				      bool with_python)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct vma_lookup lookup;
	struct stack_key key;
	struct scratch_buffers *s;
	long bytes;
	__u32 n;

	s = scratch();
	if (!s)
		return 0;
	bytes = bpf_get_stack(ctx, s->raw_frames, sizeof(s->raw_frames),
			      BPF_F_USER_STACK);
	if (bytes < 0)
		bytes = 0;
	n = bytes / sizeof(__u64);
	if (at_entry) {
		s->raw_frames[0] = caller_address(ctx);
		if (n == 0)
			n = 1;
	}
	if (n > MAX_STACK_FRAMES)
		n = MAX_STACK_FRAMES;

	__builtin_memset(&s->stack, 0, sizeof(s->stack));
	s->stack.stack_pid = bpf_get_current_pid_tgid() >> 32;
	s->stack.frame_count = n;
	for (__u32 i = 0; i < MAX_STACK_FRAMES; i++) {
		if (i >= n)
			break;
		lookup.address = s->raw_frames[i];
		lookup.offset = lookup.address;
		lookup.file_id = 0;
		lookup.file = NULL;
		bpf_find_vma(task, lookup.address, resolve_vma, &lookup, 0);
		s->stack.frame_offsets[i] = lookup.offset;
		s->stack.frame_files[i] = lookup.file_id;
		s->stack.frame_addresses[i] = lookup.address;
		s->frame_file_pointers[i] = (__u64)lookup.file;
	}

	if (with_python)
		s->stack.python = s->python;
	key.site = new_site_id();
	if (!key.site)
		return 0;
	if (bpf_map_update_elem(&stackmap, &key, &s->stack, BPF_NOEXIST)) {
		count_stat(STAT_SITES_FULL);
		return 0;
	}
	return key.site;
}

/* Send the paths of the files the stack just captured points into. */
static __always_inline void send_stack_files(void)
{
	struct scratch_buffers *s = scratch();
	__u32 n;

	if (!s)
		return;
	n = s->stack.frame_count;
	for (__u32 i = 0; i < MAX_STACK_FRAMES; i++) {
		if (i >= n)
			break;
		if (s->frame_file_pointers[i])
			send_file_path(s->stack.frame_files[i],
				       s->frame_file_pointers[i]);
	}
}

/* The user stack of the current acquisition under a new site id (0 if none),
 * its files' paths sent. */
static __always_inline __u64 capture_site(struct pt_regs *ctx, bool at_entry)
{
	__u64 site;

	/* before the stack, not from inside it: their frames never add up */
	capture_python_frames();
	site = capture_stack(ctx, at_entry, true);

	if (site)
		send_stack_files();
	return site;
}

#endif /* IGDEADLOCK_SITES_H */
