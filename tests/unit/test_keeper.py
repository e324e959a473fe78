"""The keeper of mapped files: which files it keeps open, how many, and which it
closes first."""

from __future__ import annotations

import gc
import os
from typing import Dict, List, Optional, Set, Tuple

import pytest

from igdeadlock.host.keeper import FileOpener, MappedFileKeeper, keeper_for, kept_for, kernel_device
from igdeadlock.records import MappedFile, StackTrace


class FakeOpener(FileOpener):
    """Opens /dev/null for the files it is told it can open, and notes every try."""

    def __init__(self, by_identity: Set[int] = frozenset(), in_process: Set[Tuple[int, int]] = frozenset(),
                 visible: Set[int] = frozenset()) -> None:
        super().__init__()
        self.openable, self.through, self.visible = set(by_identity), set(in_process), set(visible)
        self.tries: List[Tuple[str, int, int]] = []
        self.fds: Dict[int, int] = {}  # file id -> the last descriptor opened for it

    def _open(self, file_id: int) -> int:
        fd = self.fds[file_id] = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return fd

    def visible_here(self, mapped: MappedFile) -> bool:
        return mapped.file_id in self.visible

    def by_identity(self, mapped: MappedFile) -> Optional[int]:
        self.tries.append(("identity", mapped.file_id, 0))
        return self._open(mapped.file_id) if mapped.file_id in self.openable else None

    def in_process(self, mapped: MappedFile, pid: int) -> Optional[int]:
        self.tries.append(("process", mapped.file_id, pid))
        return self._open(mapped.file_id) if (mapped.file_id, pid) in self.through else None


def mapped(file_id: int) -> MappedFile:
    return MappedFile(file_id, 1000 + file_id, 8 << 20, f"/lib/file{file_id}.so")


def stack(pid: int, *file_ids: int) -> StackTrace:
    return StackTrace(1, pid, tuple((file_id, 0x10) for file_id in file_ids), tuple(range(len(file_ids))))


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_at_most_capacity_files_are_kept_and_the_least_recently_used_is_closed_first():
    opener = FakeOpener(by_identity={1, 2, 3, 4})
    keeper = MappedFileKeeper(capacity=3, opener=opener)
    try:
        for file_id in (1, 2, 3):
            keeper.note(mapped(file_id))
        assert len(keeper) == 3
        # used since: file 1 by a new stack, file 2 by the symbolizer; file 3 is the oldest now
        keeper.note(stack(50, 1))
        assert keeper.path(2) == f"/proc/{os.getpid()}/fd/{opener.fds[2]}"
        third = opener.fds[3]
        keeper.note(mapped(4))
        assert not is_open(third)
        assert len(keeper) == 3
        assert keeper.path(3) is None
        assert all(keeper.path(file_id) is not None for file_id in (1, 2, 4))
        kept = [opener.fds[file_id] for file_id in (1, 2, 4)]
        assert all(is_open(fd) for fd in kept)
    finally:
        keeper.close()
    assert not any(is_open(fd) for fd in kept)
    assert len(keeper) == 0


def test_a_file_is_opened_once_and_files_visible_here_not_at_all():
    opener = FakeOpener(by_identity={1, 2}, visible={2})
    keeper = MappedFileKeeper(opener=opener)
    try:
        keeper.note(mapped(1))
        keeper.note(mapped(1))  # sent again (a reconnection)
        keeper.note(mapped(2))
        assert opener.tries == [("identity", 1, 0)]
        assert keeper.path(1) is not None and keeper.path(2) is None
    finally:
        keeper.close()


def test_a_file_no_handle_opens_is_opened_through_a_process_that_maps_it():
    opener = FakeOpener(in_process={(1, 60), (2, 70)})
    keeper = MappedFileKeeper(opener=opener)
    try:
        keeper.note(stack(60, 1))  # the stack arrives before its file's record
        keeper.note(mapped(1))
        keeper.note(mapped(2))  # the file's record first: it waits for a stack through it
        keeper.note(stack(71, 2))  # a process through which it cannot be opened
        keeper.note(stack(71, 2))  # tried once per process
        keeper.note(stack(70, 2, 0))  # frame 0: an address in no file
        assert opener.tries == [("identity", 1, 0), ("process", 1, 60), ("identity", 2, 0), ("process", 2, 71),
                                ("process", 2, 70)]
        assert keeper.path(1) is not None and keeper.path(2) is not None
    finally:
        keeper.close()


def test_no_file_is_kept_with_no_room():
    opener = FakeOpener(by_identity={1})
    keeper = MappedFileKeeper(capacity=0, opener=opener)
    keeper.note(mapped(1))
    assert keeper.path(1) is None and not is_open(opener.fds[1])


def test_one_keeper_serves_all_runs_of_a_target_and_closes_with_it():
    class Target:  # a Collector, as far as the keeper is concerned
        pass

    target, other = Target(), Target()
    assert kept_for(target) is None  # looking does not make one
    keeper = keeper_for(target)
    assert keeper_for(target) is keeper and kept_for(target) is keeper  # a reconnection's run: the same files
    assert kept_for(other) is None
    opener = keeper.opener = FakeOpener(by_identity={1})
    keeper.note(mapped(1))
    assert is_open(opener.fds[1])
    del target, keeper
    gc.collect()
    assert not is_open(opener.fds[1])  # closed once the target is gone


def test_a_file_out_of_reach_at_its_path_is_opened_by_its_device_and_inode():
    """The real thing, where this checkout's filesystem allows (ext4 as root): the
    file is named by a path that does not exist here, as a container's would be."""
    if os.geteuid() != 0:
        pytest.skip("file handles need CAP_DAC_READ_SEARCH")
    info = os.stat(__file__)
    record = MappedFile(7, info.st_ino, kernel_device(info.st_dev), "/nowhere/program")
    keeper = MappedFileKeeper()
    try:
        keeper.note(record)
        path = keeper.path(7)
        if path is None:
            pytest.skip("this filesystem's file handles are not made of an inode number and a generation")
        with open(path, "rb") as kept, open(__file__, "rb") as ours:
            assert kept.read() == ours.read()
        assert os.stat(path).st_ino == info.st_ino
        # a device not mounted here: nothing to open it on
        keeper.note(record._replace(file_id=8, device=(4095 << 20) | 4095))
        assert keeper.path(8) is None
    finally:
        keeper.close()
