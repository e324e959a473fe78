"""Mapped files kept open, so that stacks can be symbolized after their process,
and its container, are gone.

The Symbolizer opens a frame's file when the report is made: as the process saw
it (/proc/PID/root/PATH), then at the same path here. A process that ran in a
container and exited, or whose container was removed, is reachable neither way,
and its files are not at their paths in our mount namespace. So while a local
session runs, the keeper opens those files as their records arrive and keeps
the descriptors; the Symbolizer then reads a file through /proc/OURPID/fd/N.

Two ways to open a file, both checked to give the inode the gadget reported:

- by its identity: the gadget's (device, inode) are the real file's (a layer's
  copy for a file on an overlay), and the filesystem it is on is usually
  mounted here too (the host's disk with the container runtime's layers, a
  bind mount's source). ``open_by_handle_at`` opens it from a file handle made
  of the inode number, with generation 0, which ext2/3/4 and f2fs take for
  "any generation". No process is needed: a program that ran for a moment is
  gone before its first record arrives. The file is opened within a fetch
  interval or two of being mapped, and the kept descriptor pins the inode, so
  a later file that reuses the inode number cannot be taken for it.
- through a process that maps it, while it runs: /proc/PID/root/PATH, for a
  process whose root or mount namespace is not ours (other filesystems: xfs,
  btrfs, a container's own tmpfs; a file that exists in one container only).

Files that are at their paths here, the same inode on the same device, are not
kept: the Symbolizer finds them anyway.

One keeper serves all the runs of a target (``keeper_for`` its Collector): the
session notes records into it, the findings symbolize through it.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
import threading
import time
import weakref
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

from igdeadlock.host.overlay import real_file, unescape
from igdeadlock.records import MappedFile, StackTrace

# Kept descriptors share the process's limit on open files (a soft limit of 1024
# is common) with the uprobe links this client attaches (one per probed function
# and library), the gRPC connections and the files read while symbolizing. 512
# leaves that room, and is far more files than the stacks of one report name:
# the least recently used descriptor is closed when a new one needs its place.
MAX_KEPT_FILES = 512
# files and processes remembered until the record that completes them arrives
MAX_WAITING = 4096
MOUNTS_REREAD_SECONDS = 1.0  # a device mounted since the mount table was read

_FILEID_INO32_GEN = 1  # include/linux/exportfs.h: 32-bit inode number, generation
_AT_FDCWD = -100
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block the open


def kernel_device(device: int) -> int:
    """The kernel's s_dev encoding of a device (major << 20 | minor), as the gadget
    reports it, of a ``st_dev``."""
    return os.major(device) << 20 | os.minor(device)


def stat_device(device: int) -> int:
    """``st_dev`` of a device in the kernel's s_dev encoding."""
    return os.makedev(device >> 20, device & 0xFFFFF)


_MAX_HANDLE_SZ = 128  # include/linux/exportfs.h


class _FileHandle(ctypes.Structure):  # struct file_handle
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * _MAX_HANDLE_SZ)]


class FileOpener:
    """The two ways to open a mapped file (see the module's description); each
    returns a descriptor of the very inode, or None."""

    def __init__(self) -> None:
        self._mounts: Dict[int, List[str]] = {}  # device (s_dev) -> its mount points here
        self._mounts_read = -MOUNTS_REREAD_SECONDS
        self._handle_mounts: Dict[int, Optional[str]] = {}  # device -> a mount point to open handles on
        self._libc: Optional[ctypes.CDLL] = None
        self._handles_refused = False  # no CAP_DAC_READ_SEARCH, or no such call
        try:
            ours = os.stat("/")
            self._our_root: Optional[Tuple[int, int]] = (ours.st_dev, ours.st_ino)
            self._our_mntns: Optional[int] = os.stat("/proc/self/ns/mnt").st_ino
        except OSError:
            self._our_root = self._our_mntns = None

    def visible_here(self, mapped: MappedFile) -> bool:
        """The file is at its path in our mount namespace."""
        try:
            info = os.stat(mapped.path)
        except OSError:
            return False
        return (info.st_ino, info.st_dev) == (mapped.inode, stat_device(mapped.device))

    def by_identity(self, mapped: MappedFile) -> Optional[int]:
        if self._handles_refused or not 0 < mapped.inode < 1 << 32:
            return None
        mount = self._handle_mount(mapped.device)
        if mount is None:
            return None
        handle = _FileHandle(handle_bytes=8, handle_type=_FILEID_INO32_GEN)
        ctypes.memmove(handle.f_handle, struct.pack("=II", mapped.inode, 0), 8)
        try:
            mount_fd = os.open(mount, _OPEN_FLAGS)
        except OSError:
            return None
        try:
            assert self._libc is not None
            fd = self._libc.open_by_handle_at(mount_fd, ctypes.byref(handle), _OPEN_FLAGS)
            error = ctypes.get_errno()
        finally:
            os.close(mount_fd)
        if fd < 0:
            if error == 1:  # EPERM: handles need CAP_DAC_READ_SEARCH; no use asking again
                self._handles_refused = True
            return None
        return _checked(fd, lambda info: (info.st_ino, info.st_dev) == (mapped.inode, stat_device(mapped.device)))

    def in_process(self, mapped: MappedFile, pid: int) -> Optional[int]:
        if not mapped.path.startswith("/") or not self._elsewhere(pid):
            return None
        path = f"/proc/{pid}/root{mapped.path}"
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError:
            return None

        def same(info: os.stat_result) -> bool:
            if not mapped.inode or info.st_ino == mapped.inode:
                return True
            # an overlay may number its files apart from the layers' (xino): the layer's copy tells
            on_overlay, layer = real_file(pid, mapped.path, info)
            try:
                return on_overlay and layer is not None and os.stat(layer).st_ino == mapped.inode
            except OSError:
                return False

        return _checked(fd, same)

    def _elsewhere(self, pid: int) -> bool:
        """The process sees another file system tree than we do."""
        try:
            root = os.stat(f"/proc/{pid}/root")
            mntns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        except OSError:
            return False
        return (root.st_dev, root.st_ino) != self._our_root or mntns != self._our_mntns

    def _handle_mount(self, device: int) -> Optional[str]:
        """A mount point of the device here whose file handles are a 32-bit inode
        number and a generation (what handles made here assume); None if none is."""
        if device in self._handle_mounts:
            return self._handle_mounts[device]
        if self._libc is None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
            except OSError:
                libc = None
            if libc is None or not all(hasattr(libc, name) for name in ("name_to_handle_at", "open_by_handle_at")):
                self._handles_refused = True
                return None
            self._libc = libc
        points = self._mount_points(device)
        if points is None:
            return None  # not mounted here (yet: asked again after a while)
        found = None
        for point in points:
            handle, mount_id = _FileHandle(handle_bytes=_MAX_HANDLE_SZ), ctypes.c_int()
            try:
                info = os.stat(point)
            except OSError:
                continue
            if info.st_dev != stat_device(device):
                continue  # another mount on top of it
            if self._libc.name_to_handle_at(_AT_FDCWD, os.fsencode(point), ctypes.byref(handle),
                                            ctypes.byref(mount_id), 0) != 0:
                continue
            if (handle.handle_type, handle.handle_bytes) == (_FILEID_INO32_GEN, 8) and \
                    struct.unpack("=I", bytes(handle.f_handle[:4]))[0] == info.st_ino & 0xFFFFFFFF:
                found = point
                break
        self._handle_mounts[device] = found
        return found

    def _mount_points(self, device: int) -> Optional[List[str]]:
        if device not in self._mounts and time.monotonic() - self._mounts_read >= MOUNTS_REREAD_SECONDS:
            self._mounts_read = time.monotonic()
            self._mounts = _read_mounts()
        return self._mounts.get(device)


def _read_mounts() -> Dict[int, List[str]]:
    """device (s_dev) -> mount points in our namespace, mounts of the whole
    filesystem (root "/") first."""
    mounts: Dict[int, List[Tuple[bool, str]]] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    for line in lines:
        fields = line.split(" ", 5)
        if len(fields) < 5:
            continue
        major, _, minor = fields[2].partition(":")
        if not major.isdigit() or not minor.isdigit():
            continue
        mounts.setdefault(int(major) << 20 | int(minor), []).append((fields[3] != "/", unescape(fields[4])))
    return {device: [point for _, point in sorted(points, key=lambda p: p[0])] for device, points in mounts.items()}


def _checked(fd: int, same: Callable[[os.stat_result], bool]) -> Optional[int]:
    """``fd`` if it is a regular file that ``same`` accepts; otherwise it is closed."""
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and same(info):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


class MappedFileKeeper:
    """Descriptors of the mapped files that would be out of reach once their
    processes are gone, opened as the gadget's records arrive (``note``): at most
    ``capacity``, the least recently used closed first."""

    RECORDS = (MappedFile, StackTrace)  # what ``note`` takes

    def __init__(self, capacity: int = MAX_KEPT_FILES, opener: Optional[FileOpener] = None) -> None:
        self.capacity = capacity
        self.opener = opener if opener is not None else FileOpener()
        # file id (the gadget's hash of device and inode: one per file) -> descriptor,
        # least recently used first
        self._kept: "OrderedDict[int, int]" = OrderedDict()
        # files no handle could open: tried through the processes that map them
        self._waiting: "OrderedDict[int, Tuple[MappedFile, int]]" = OrderedDict()  # id -> (file, pid tried)
        # file id -> a process whose stack goes through it, before the file's record came
        self._users: "OrderedDict[int, int]" = OrderedDict()
        self._lock = threading.Lock()

    def note(self, record: object) -> None:
        """Take a record the session received (one of RECORDS; others are ignored)."""
        with self._lock:
            if type(record) is MappedFile:
                self._file(record)
            elif type(record) is StackTrace:
                self._stack(record)

    def _file(self, mapped: MappedFile) -> None:
        pid = self._users.pop(mapped.file_id, 0)
        if mapped.file_id in self._kept or not mapped.path or self.opener.visible_here(mapped):
            return
        fd = self.opener.by_identity(mapped)
        if fd is None and pid:
            fd = self.opener.in_process(mapped, pid)
        if fd is not None:
            self._keep(mapped.file_id, fd)
        else:
            _bounded_put(self._waiting, mapped.file_id, (mapped, pid))

    def _stack(self, stack: StackTrace) -> None:
        for file_id, _ in stack.frames:
            if not file_id:
                continue
            if file_id in self._kept:
                self._kept.move_to_end(file_id)
                continue
            waiting = self._waiting.get(file_id)
            if waiting is None:
                _bounded_put(self._users, file_id, stack.pid)  # its record comes later
                continue
            mapped, tried = waiting
            if tried == stack.pid:
                continue
            fd = self.opener.in_process(mapped, stack.pid)
            if fd is not None:
                del self._waiting[file_id]
                self._keep(file_id, fd)
            else:
                self._waiting[file_id] = (mapped, stack.pid)

    def _keep(self, file_id: int, fd: int) -> None:
        while len(self._kept) >= self.capacity and self._kept:
            _, oldest = self._kept.popitem(last=False)
            os.close(oldest)
        if self.capacity > 0:
            self._kept[file_id] = fd
        else:
            os.close(fd)

    def path(self, file_id: int) -> Optional[str]:
        """A path that opens the kept file, for this process and its children
        (addr2line), or None."""
        with self._lock:
            fd = self._kept.get(file_id)
            if fd is None:
                return None
            self._kept.move_to_end(file_id)
            return f"/proc/{os.getpid()}/fd/{fd}"

    def __len__(self) -> int:
        return len(self._kept)

    def close(self) -> None:
        with self._lock:
            for fd in self._kept.values():
                os.close(fd)
            self._kept.clear()
            self._waiting.clear()
            self._users.clear()


_Value = TypeVar("_Value")


def _bounded_put(table: "OrderedDict[int, _Value]", key: int, value: _Value) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_WAITING:
        table.popitem(last=False)


_keepers: "weakref.WeakKeyDictionary[object, MappedFileKeeper]" = weakref.WeakKeyDictionary()


def keeper_for(owner: object) -> MappedFileKeeper:
    """The files a target's stacks go through, kept open: one keeper for all its
    runs (a reconnection's records name the same files), closed with ``owner``
    (the target's Collector) when it is collected."""
    keeper = _keepers.get(owner)
    if keeper is None:
        keeper = _keepers[owner] = MappedFileKeeper()
        weakref.finalize(owner, keeper.close)
    return keeper


def kept_for(owner: object) -> Optional[MappedFileKeeper]:
    """The keeper ``keeper_for`` made for ``owner``, or None; never makes one (a
    target traced through a remote service keeps no files: they are on its host)."""
    return _keepers.get(owner)
