"""What /proc tells about processes on this host."""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, MutableMapping, Optional, Sequence, Tuple

from igdeadlock.records import MappedFile

_CLOCK_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def process_start_ns(pid: int) -> Optional[int]:
    """When the process started, on the boot clock (ns, to clock-tick precision);
    None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[19]) * _CLOCK_TICK_NS  # field 22 of stat, counted after the comm
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start_ns: int) -> Optional[bool]:
    """Whether the process (pid, start time on the boot clock) still runs on this
    host: False when the pid is gone or belongs to a newer process."""
    if not os.path.exists(f"/proc/{pid}"):
        return False
    started = process_start_ns(pid)
    if started is None:
        return None
    return abs(started - start_ns) <= 2 * _CLOCK_TICK_NS


PF_KTHREAD = 0x00200000  # the flags of /proc/PID/stat: a kernel thread


def why_not_a_user_process(pid: int) -> Optional[str]:
    """Why process ``pid`` of this host cannot be looked at for locks (it does
    not exist, it is a kernel thread), or None when it can."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return f"there is no process {pid}"
    try:
        flags = int(fields[6])  # field 9 of stat, counted after the comm
    except (IndexError, ValueError):
        return None
    if flags & PF_KTHREAD:
        return f"process {pid} is a kernel thread: it takes no user-space locks"
    return None


def mount_namespace_of(pid: int) -> int:
    """The inode of a process's mount namespace (0 when unknown), as the gadget reports it."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return 0


def running_pids() -> List[int]:
    """Every process on this host (its /proc)."""
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


# One file-backed mapping of a process: (start, end, file offset, path as the
# process sees it, inode, device).
Mapping = Tuple[int, int, int, str, int, int]


def file_mappings(pid: int) -> List[Mapping]:
    """The file-backed mappings of a running process (/proc/PID/maps); [] once it is gone."""
    try:
        with open(f"/proc/{pid}/maps") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[4] == "0" or not fields[5].startswith("/"):
            continue
        start, _, end = fields[0].partition("-")
        major, _, minor = fields[3].partition(":")
        found.append((int(start, 16), int(end, 16), int(fields[2], 16), fields[5], int(fields[4]),
                      os.makedev(int(major, 16), int(minor, 16))))
    return found


def locate(addresses: Iterable[int], mappings: Iterable[Mapping]) -> Dict[int, Tuple[str, int, int, int]]:
    """Where each address is in these mappings: address -> (path, offset in the
    file, inode, device); addresses outside them are left out."""
    wanted = sorted(set(addresses))
    found: Dict[int, Tuple[str, int, int, int]] = {}
    for low, high, offset, path, inode, device in mappings if wanted else ():
        for address in wanted:
            if low <= address < high:
                found[address] = (path, address - low + offset, inode, device)
    return found


def code_locations(pid: int, addresses: Iterable[int]) -> Dict[int, Tuple[str, int, int, int]]:
    """Where each code address of a running process is: address -> (path as the
    process sees it, offset in that file, inode, device). Addresses outside any
    file-backed mapping, and all of them once the process is gone, are left out."""
    wanted = set(addresses)
    return locate(wanted, file_mappings(pid)) if wanted else {}


def container_pids(container_ids: Iterable[str], proc: str = "/proc") -> List[int]:
    """The processes of these containers (the runtime's full ids) that run on this
    host, as this host's /proc shows them: same kernel, same process ids (none
    when the containers run elsewhere). Container runtimes name a container's
    cgroup after its id (cgroupfs: .../<id>; systemd: ...-<id>.scope), with
    cgroup v1 and v2 alike."""
    wanted = [i for i in container_ids if len(i) >= 12]  # a short id could match by chance
    if not wanted:
        return []
    found = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc, name, "cgroup")) as handle:
                text = handle.read()
        except OSError:
            continue  # gone meanwhile
        if any(i in text for i in wanted):
            found.append(int(name))
    return sorted(found)


def learn_code_locations(pid: int, addresses: Iterable[int], files: MutableMapping[int, MappedFile],
                         resolved: MutableMapping[Tuple[int, int], Tuple[int, int]],
                         mappings: Optional[Sequence[Mapping]] = None) -> None:
    """Name code addresses of a process from its mappings (``mappings``, or its
    /proc/PID/maps while it runs): each file gets an id of its own in ``files``
    (below 0, apart from the gadget's), each address its (file id, offset) in
    ``resolved``, keyed (pid, address)."""
    bare = [a for a in addresses if (pid, a) not in resolved]
    ids = {(m.path, m.inode): file_id for file_id, m in files.items() if file_id < 0}
    located = locate(bare, mappings) if mappings is not None else code_locations(pid, bare)
    for address, (path, offset, inode, device) in located.items():
        file_id = ids.get((path, inode))
        if file_id is None:
            file_id = ids[(path, inode)] = -1 - len(ids)
            files[file_id] = MappedFile(file_id, inode, device, path)
        resolved[(pid, address)] = (file_id, offset)
