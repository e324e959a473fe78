"""What a snapshot's waiting thread waits for, told from its stack and the lock's
memory as the C libraries lay it out (host/snapshot.py), on hand-made memory."""

from __future__ import annotations

import struct
from typing import Dict, Optional

from igdeadlock.gadget import Acquire, LockKind, LockMode, SnapshotCall
from igdeadlock.host.snapshot import (
    _Process,
    kernel_known_wait,
    lock_wait,
    plain_name,
    wait_function,
)
from igdeadlock.records import Frame, WaitingThread

THREADS = {101, 102, 103}  # the process's threads, as it numbers them


class Memory(_Process):
    """A process whose memory is a dict of 32-bit words."""

    def __init__(self, words: Dict[int, int], musl: bool = False) -> None:
        super().__init__(1, musl)
        self.memory = dict(words)

    def word(self, address: int) -> Optional[int]:
        return self.memory.get(address)

    def words(self, address: int, size: int) -> Optional[bytes]:
        return b"".join(struct.pack("<I", self.memory.get(address + i, 0)) for i in range(0, size, 4))


def waiting(futex: int, sp: int = 0x7000_0000, saved=(0,) * 6, value: int = 2, op: int = 0x80,
            owner: int = 0, tid: int = 101, timed: int = 0) -> WaitingThread:
    return WaitingThread(pid=1, tid=tid, comm="p", mntns_id=1, process_start=1, ns_tid=tid, futex=futex, op=op,
                         value=value, owner_tid=owner, call=SnapshotCall.FUTEX, timed=timed, last_ran=5,
                         switches=7, since=3, observed=9, process_threads=3, user_pc=0x1000, user_sp=sp,
                         user_fp=0, user_saved=tuple(saved), kernel_frames=())


def frames(*functions: Optional[str], file: str = "/usr/lib/x86_64-linux-gnu/libc.so.6"):
    return [Frame(0x10, file, f) for f in functions]


def test_glibcs_internal_names_are_the_exported_ones():
    assert plain_name("__GI___pthread_mutex_lock") == "pthread_mutex_lock"
    assert plain_name("__libc_start_main@@GLIBC_2.34") == "start_main"
    assert plain_name("__new_sem_wait_slow64.constprop.0") == "new_sem_wait_slow64"


def test_the_innermost_named_frame_says_what_a_thread_waits_in():
    assert wait_function(frames("__GI___lll_lock_wait", "__GI___pthread_mutex_lock", "main")) == "mutex"
    assert wait_function(frames("__futex_abstimed_wait_common", "__pthread_rwlock_rdlock_full64")) == "rdlock"
    assert wait_function(frames("__futex_abstimed_wait_common", "___pthread_rwlock_wrlock")) == "wrlock"
    assert wait_function(frames("__futex_abstimed_wait_common", "___pthread_cond_wait")) == "condition"
    assert wait_function(frames("__futex_abstimed_wait_common", "__pthread_clockjoin_ex")) == "join"
    assert wait_function(frames("__futex_abstimed_wait_common", "__new_sem_wait_slow64.constprop.0")) == "semaphore"
    assert wait_function(frames(None, "some_function_of_its_own")) is None


def test_a_stripped_glibs_mutex_wait_is_told_by_its_word():
    """GLib sleeps through syscall() in a function it does not export; its
    GMutex expects the word to be 2 (contended), its condition variables not."""
    stack = frames("syscall") + frames(None, file="/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0.7400.6")
    assert wait_function(stack, waiting(0x5000, value=2)) == "gmutex"
    assert wait_function(stack, waiting(0x5000, value=7)) is None


def is_thread(tid: int) -> bool:
    return tid in THREADS


def test_a_glibc_mutex_names_its_owner():
    mutex = 0x5000
    memory = Memory({mutex: 2, mutex + 8: 102, mutex + 16: 0})
    wait = lock_wait(waiting(mutex), "mutex", memory, is_thread)
    assert (wait.kind, wait.lock, wait.mode, wait.owner_ns_tid) == (LockKind.MUTEX, mutex, LockMode.EXCLUSIVE, 102)


def test_an_owner_that_is_no_thread_of_the_process_is_not_named():
    mutex = 0x5000
    memory = Memory({mutex: 2, mutex + 8: 0x3FFFFFFF})  # a garbage word: no thread
    assert lock_wait(waiting(mutex), "mutex", memory, is_thread).owner_ns_tid == 0


def test_a_musl_mutex_names_its_owner_only_where_its_type_keeps_one():
    mutex = 0x5000
    errorcheck = Memory({mutex: 2, mutex + 4: 0x80000000 | 103}, musl=True)
    wait = lock_wait(waiting(mutex + 4), "mutex", errorcheck, is_thread)
    assert (wait.lock, wait.owner_ns_tid) == (mutex, 103)
    normal = Memory({mutex: 0, mutex + 4: 0x80000000 | 103}, musl=True)
    assert lock_wait(waiting(mutex + 4), "mutex", normal, is_thread).owner_ns_tid == 0


def test_an_rwlock_writer_waiting_for_a_writer_and_a_reader_waiting_for_it():
    rwlock = 0x6000
    memory = Memory({rwlock + 24: 103})  # __cur_writer
    writer = lock_wait(waiting(rwlock + 12), "wrlock", memory, is_thread)  # on __writers_futex
    assert (writer.kind, writer.lock, writer.mode, writer.owner_ns_tid) == (LockKind.RWLOCK, rwlock,
                                                                           LockMode.EXCLUSIVE, 103)
    reader = lock_wait(waiting(rwlock + 8), "rdlock", memory, is_thread)  # on __wrphase_futex
    assert (reader.lock, reader.mode, reader.owner_ns_tid) == (rwlock, LockMode.SHARED, 103)


def test_a_writer_waiting_for_readers_has_no_owner():
    rwlock = 0x6000
    memory = Memory({rwlock + 24: 0})
    wait = lock_wait(waiting(rwlock + 8), "wrlock", memory, is_thread)
    assert (wait.lock, wait.owner_ns_tid) == (rwlock, 0)


def test_a_pi_mutex_the_kernel_would_deadlock_on_is_found_in_a_register():
    """glibc keeps such a thread waiting forever on a word of its own stack; the
    mutex (here through a pointer to its __kind) is in a register."""
    mutex, sp = 0x5000, 0x7000_0000
    memory = Memory({mutex: 0x80000000 | 102, mutex + 16: 0x20})  # PI, owned by 102
    wait = lock_wait(waiting(sp + 0x54, sp=sp, saved=(sp + 0x54, 0, 0, 0, mutex + 16, 0)), "mutex", memory,
                     is_thread)
    assert (wait.kind, wait.lock, wait.owner_ns_tid) == (LockKind.MUTEX, mutex, 102)


def test_anything_else_is_a_wait_on_a_futex_word():
    wait = lock_wait(waiting(0x7777), "condition", Memory({}), is_thread)
    assert (wait.kind, wait.lock, wait.owner_ns_tid) == (LockKind.FUTEX, 0x7777, 0)


def test_what_the_kernel_alone_tells_of_a_remote_wait():
    pi = kernel_known_wait(waiting(0x5000, owner=102, op=0x86))
    assert (pi.kind, pi.lock, pi.owner_tid, pi.switches) == (LockKind.MUTEX, 0x5000, 102, 7)
    other = kernel_known_wait(waiting(0x5000, timed=1))
    assert (other.kind, other.owner_tid, other.how) == (LockKind.FUTEX, 0, Acquire.TIMED)
