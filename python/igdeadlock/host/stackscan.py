"""The stack of a thread of this host that sits in a system call, by scanning.

The gadget walks frame pointers, which ends inside C libraries built without
them: a thread waiting in a futex shows one frame. While it waits, its stack
can be read: every word from the stack pointer up that points into executable
code just after a call instruction is taken as a return address. Stale words
can slip in (a return address left by an earlier call); the innermost frames,
which name the wait, are the live ones.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

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


def _executable_ranges(pid: int) -> List[Tuple[int, int]]:
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
    return ranges


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


def scan_stack(pid: int, tid: int) -> List[int]:
    """Return addresses on the stack of thread ``tid`` of process ``pid``, the
    innermost first, starting with the code it blocks in; [] when it does not
    sit in a system call or cannot be read."""
    registers = _syscall_registers(pid, tid)
    arch = machine()
    if registers is None or arch not in ("x86_64", "aarch64"):
        return []
    sp, pc = registers
    after_call = _after_call_x86_64 if arch == "x86_64" else _after_call_aarch64
    code = _executable_ranges(pid)

    def in_code(address: int) -> bool:
        return any(low + 8 <= address < high for low, high in code)

    frames = [pc]
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(sp)
            stack = mem.read(SCAN_BYTES)
            for (word,) in struct.iter_unpack("<Q", stack[:len(stack) - len(stack) % 8]):
                if len(frames) >= MAX_FRAMES:
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
