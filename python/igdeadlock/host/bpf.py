"""The bpf(2) calls the client needs: list loaded programs with their full
names (from BTF), their maps and their run-time statistics; attach programs to
perf events; run a task iterator."""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_GET_FD_BY_ID = 19
BPF_LINK_CREATE = 28
BPF_ITER_CREATE = 33
BPF_TRACE_ITER = 28  # link attach type: an iterator program
BPF_PERF_EVENT = 41  # link attach type: a program on a perf event, with a cookie
ITER_READ_SIZE = 64 * 1024

_SYS_BPF = {"x86_64": 321, "aarch64": 280}

# struct bpf_prog_info (include/uapi/linux/bpf.h): the offsets used here
PROG_INFO_SIZE = 232
_ID, _NR_MAP_IDS, _MAP_IDS, _NAME = 4, 52, 56, 64
_BTF_ID, _FUNC_INFO_REC_SIZE, _FUNC_INFO, _NR_FUNC_INFO = 128, 132, 136, 144
_RUN_TIME_NS, _RUN_CNT = 192, 200
MAX_MAP_IDS = 64
# struct bpf_map_info: its size here, and where its name is
MAP_INFO_SIZE = 80
_MAP_NAME = 24

# BTF kinds and the size of what follows each struct btf_type (12 bytes)
BTF_KIND_FUNC = 12
_BTF_EXTRA = {1: lambda vlen: 4, 3: lambda vlen: 12, 4: lambda vlen: 12 * vlen, 5: lambda vlen: 12 * vlen,
              6: lambda vlen: 8 * vlen, 13: lambda vlen: 8 * vlen, 14: lambda vlen: 4,
              15: lambda vlen: 12 * vlen, 17: lambda vlen: 4, 19: lambda vlen: 12 * vlen}


class BpfError(OSError):
    """A bpf(2) call failed."""


def machine() -> str:
    """The architecture as Linux names it (x86_64, aarch64)."""
    name = platform.machine()
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(name, name)


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long


def syscall(number: int, *args: object) -> int:
    """syscall(2) through libc; raises OSError with the errno on failure."""
    result = _LIBC.syscall(ctypes.c_long(number), *args)
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


@dataclass(frozen=True)
class ProgramInfo:
    id: int
    name: str  # the full name from BTF when the kernel's 15-character copy is cut
    map_ids: Tuple[int, ...]
    run_time_ns: int  # with sysctl kernel.bpf_stats_enabled=1
    run_count: int


class Bpf:
    def __init__(self) -> None:
        number = _SYS_BPF.get(machine())
        if number is None:
            raise BpfError(0, f"bpf(2) calls are not supported on {machine()}")
        self._number = number
        self._btf_names: Dict[int, Dict[int, str]] = {}

    def call(self, command: int, attr: ctypes.Array) -> int:
        try:
            return syscall(self._number, ctypes.c_long(command), attr, ctypes.c_long(len(attr)))
        except OSError as exc:
            raise BpfError(exc.errno, exc.strerror) from None

    def program_fd(self, prog_id: int) -> int:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<I", attr, 0, prog_id)
        return self.call(BPF_PROG_GET_FD_BY_ID, attr)

    def perf_event_link(self, prog_fd: int, perf_fd: int, cookie: int) -> int:
        """Attach a program to a perf event (a uprobe) with a cookie the program
        reads back with bpf_get_attach_cookie(); returns the link's fd."""
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("<IIIIQ", attr, 0, prog_fd, perf_fd, BPF_PERF_EVENT, 0, cookie)
        return self.call(BPF_LINK_CREATE, attr)

    def iterator_link(self, prog_fd: int, pid: int = 0) -> int:
        """A link of a task iterator program (``pid``: only that process's
        threads, Linux 6.1+; 0: every task of this pid namespace)."""
        info = ctypes.create_string_buffer(16)  # union bpf_iter_link_info: task.tid, task.pid, task.pid_fd
        struct.pack_into("<II", info, 0, 0, pid)
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("<IIIIQI", attr, 0, prog_fd, 0, BPF_TRACE_ITER, 0,
                         ctypes.addressof(info) if pid else 0, len(info) if pid else 0)
        return self.call(BPF_LINK_CREATE, attr)

    def read_iterator(self, link_fd: int) -> bytes:
        """One run of an iterator: everything its program wrote."""
        attr = ctypes.create_string_buffer(8)
        struct.pack_into("<I", attr, 0, link_fd)
        fd = self.call(BPF_ITER_CREATE, attr)
        chunks: List[bytes] = []
        try:
            while True:
                try:
                    chunk = os.read(fd, ITER_READ_SIZE)
                except BlockingIOError:
                    continue  # the kernel cuts a long run into reads (EAGAIN): go on
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(fd)

    def program_ids(self) -> Iterator[int]:
        current = 0
        while True:
            attr = ctypes.create_string_buffer(16)
            struct.pack_into("<I", attr, 0, current)
            try:
                self.call(BPF_PROG_GET_NEXT_ID, attr)
            except BpfError:
                return  # ENOENT: no more
            current = struct.unpack_from("<I", attr, 4)[0]
            yield current

    def _info(self, fd: int, buffer: ctypes.Array) -> None:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<IIQ", attr, 0, fd, len(buffer), ctypes.addressof(buffer))
        self.call(BPF_OBJ_GET_INFO_BY_FD, attr)

    def program(self, prog_id: int) -> Optional[ProgramInfo]:
        """Information about one program, or None if it is gone."""
        try:
            fd = self.program_fd(prog_id)
        except BpfError:
            return None
        try:
            maps = (ctypes.c_uint32 * MAX_MAP_IDS)()
            func_info = (ctypes.c_uint32 * 2)()
            info = ctypes.create_string_buffer(PROG_INFO_SIZE)
            struct.pack_into("<I", info, _NR_MAP_IDS, MAX_MAP_IDS)
            struct.pack_into("<Q", info, _MAP_IDS, ctypes.addressof(maps))
            struct.pack_into("<I", info, _FUNC_INFO_REC_SIZE, 8)  # struct bpf_func_info
            struct.pack_into("<Q", info, _FUNC_INFO, ctypes.addressof(func_info))
            struct.pack_into("<I", info, _NR_FUNC_INFO, 1)
            self._info(fd, info)
        except BpfError:
            return None
        finally:
            os.close(fd)
        name = info.raw[_NAME:_NAME + 16].split(b"\0", 1)[0].decode("utf-8", "replace")
        nr_maps = min(struct.unpack_from("<I", info, _NR_MAP_IDS)[0], MAX_MAP_IDS)
        btf_id = struct.unpack_from("<I", info, _BTF_ID)[0]
        has_func_info = struct.unpack_from("<I", info, _NR_FUNC_INFO)[0] > 0
        if len(name) >= 15 and btf_id and has_func_info:
            name = self._btf_name(btf_id, func_info[1]) or name
        run_time, run_count = struct.unpack_from("<QQ", info, _RUN_TIME_NS)
        return ProgramInfo(prog_id, name, tuple(maps[:nr_maps]), run_time, run_count)

    def map_fd(self, map_id: int) -> int:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<I", attr, 0, map_id)
        return self.call(BPF_MAP_GET_FD_BY_ID, attr)

    def map_name(self, fd: int) -> str:
        """The kernel's (at most 15-character) name of a map."""
        info = ctypes.create_string_buffer(MAP_INFO_SIZE)
        self._info(fd, info)
        return info.raw[_MAP_NAME:_MAP_NAME + 16].split(b"\0", 1)[0].decode("utf-8", "replace")

    def map_update(self, fd: int, key: bytes, value: bytes) -> None:
        key_buffer, value_buffer = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(
            value, len(value))
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("<IIQQQ", attr, 0, fd, 0, ctypes.addressof(key_buffer), ctypes.addressof(value_buffer), 0)
        self.call(BPF_MAP_UPDATE_ELEM, attr)

    def map_delete(self, fd: int, key: bytes) -> None:
        key_buffer = ctypes.create_string_buffer(key, len(key))
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("<IIQ", attr, 0, fd, 0, ctypes.addressof(key_buffer))
        self.call(BPF_MAP_DELETE_ELEM, attr)

    def programs(self) -> List[ProgramInfo]:
        return [p for p in (self.program(i) for i in self.program_ids()) if p is not None]

    def _btf_name(self, btf_id: int, type_id: int) -> Optional[str]:
        names = self._btf_names.get(btf_id)
        if names is None:
            names = self._btf_names[btf_id] = self._btf_function_names(btf_id)
        return names.get(type_id)

    def _btf_function_names(self, btf_id: int) -> Dict[int, str]:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<I", attr, 0, btf_id)
        try:
            fd = self.call(BPF_BTF_GET_FD_BY_ID, attr)
        except BpfError:
            return {}
        try:
            info = ctypes.create_string_buffer(32)
            self._info(fd, info)  # first call: learn the size
            size = struct.unpack_from("<I", info, 8)[0]
            data = ctypes.create_string_buffer(size)
            info = ctypes.create_string_buffer(32)
            struct.pack_into("<QI", info, 0, ctypes.addressof(data), size)
            self._info(fd, info)
        except BpfError:
            return {}
        finally:
            os.close(fd)
        return parse_btf_function_names(data.raw)


def parse_btf_function_names(raw: bytes) -> Dict[int, str]:
    """Type id -> name of every BTF_KIND_FUNC in a raw BTF blob."""
    if len(raw) < 24 or struct.unpack_from("<H", raw, 0)[0] != 0xEB9F:
        return {}
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", raw, 4)
    types = raw[hdr_len + type_off:hdr_len + type_off + type_len]
    strings = raw[hdr_len + str_off:hdr_len + str_off + str_len]
    names: Dict[int, str] = {}
    offset, type_id = 0, 1
    while offset + 12 <= len(types):
        name_off, info, _ = struct.unpack_from("<III", types, offset)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == BTF_KIND_FUNC:
            end = strings.find(b"\0", name_off)
            names[type_id] = strings[name_off:end if end >= 0 else None].decode("utf-8", "replace")
        offset += 12 + _BTF_EXTRA.get(kind, lambda v: 0)(vlen)
        type_id += 1
    return names
