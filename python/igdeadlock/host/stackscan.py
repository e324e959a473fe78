"""The stack of a thread of this host that sits in a system call, by scanning.

The gadget walks frame pointers, which ends inside C libraries built without
them: a thread waiting in a futex shows one frame. While it waits, its stack
can be read: every word from the stack pointer up that points into executable
code just after a call instruction is taken as a return address. Stale words
can slip in (a return address left by an earlier call); the innermost frames,
which name the wait, are the live ones.
"""

from __future__ import annotations

import bisect
import struct
from typing import List, Optional, Sequence, Tuple

from igdeadlock.host.bpf import machine

SCAN_BYTES = 64 * 1024  # of stack above the stack pointer
MAX_FRAMES = 16


def _syscall_registers(pid: int, tid: int) -> Optional[Tuple[int, int]]:
    """(stack pointer, program counter) of a thread blocked in a system call."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as handle:
            fields = handle.read().split()
    except OSError:
        return None
    if len(fields) < 9:  # "running", or not in a system call
        return None
    return int(fields[7], 16), int(fields[8], 16)


def executable_ranges(pid: int) -> List[Tuple[int, int]]:
    """The process's executable file mappings, sorted: (start, end)."""
    ranges = []
    try:
        with open(f"/proc/{pid}/maps") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 6 and "x" in fields[1] and fields[5].startswith("/"):
                    low, _, high = fields[0].partition("-")
                    ranges.append((int(low, 16), int(high, 16)))
    except OSError:
        pass
    return sorted(ranges)


def _after_call_x86_64(before: bytes) -> bool:
    """The 7 bytes before a return address end with a call: E8 rel32, or FF /2
    (indirect, 2 to 7 bytes long)."""
    if before[-5] == 0xE8:
        return True
    for length in (2, 3, 4, 6, 7):
        if before[-length] == 0xFF and (before[-length + 1] >> 3) & 7 == 2:
            return True
    # with a REX prefix (41 FF D0..D7: call r8..r15)
    return before[-3] == 0x41 and before[-2] == 0xFF and (before[-1] >> 3) & 7 == 2


def _after_call_aarch64(before: bytes) -> bool:
    """The instruction before a return address is BL or BLR."""
    (word,) = struct.unpack("<I", before[-4:])
    return word >> 26 == 0b100101 or word & 0xFFFFFC1F == 0xD63F0000


def scan_stack(pid: int, tid: int, max_frames: int = MAX_FRAMES, scan_bytes: int = SCAN_BYTES,
               code: Optional[Sequence[Tuple[int, int]]] = None) -> List[int]:
    """Return addresses on the stack of thread ``tid`` of process ``pid``, the
    innermost first, starting with the code it blocks in (at most
    ``max_frames``, from ``scan_bytes`` of stack; ``code``: the process's
    executable_ranges, read here if not given); [] when it does not sit in a
    system call or cannot be read."""
    registers = _syscall_registers(pid, tid)
    arch = machine()
    if registers is None or arch not in ("x86_64", "aarch64"):
        return []
    sp, pc = registers
    after_call = _after_call_x86_64 if arch == "x86_64" else _after_call_aarch64
    ranges = code if code is not None else executable_ranges(pid)
    starts = [low for low, _ in ranges]

    def in_code(address: int) -> bool:
        i = bisect.bisect_right(starts, address) - 1
        return i >= 0 and ranges[i][0] + 8 <= address < ranges[i][1]

    frames = [pc]
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(sp)
            stack = mem.read(scan_bytes)
            for (word,) in struct.iter_unpack("<Q", stack[:len(stack) - len(stack) % 8]):
                if len(frames) >= max_frames:
                    break
                if not in_code(word):
                    continue
                try:
                    mem.seek(word - 8)
                    before = mem.read(8)
                except (OSError, ValueError):
                    continue
                if len(before) == 8 and after_call(before):
                    frames.append(word)
    except (OSError, ValueError, OverflowError):
        pass
    return frames if len(frames) > 1 else []
