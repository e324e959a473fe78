"""Python stacks of CPython processes, as py-spy reads them: the gadget walks
the current thread's interpreter frames at each new acquisition site (code
object, instruction), and sends once per code object its file, function and
line table (the python_codes datasource), with the layout this module finds
for each process: where its _PyRuntime is, and its version's struct offsets.

Layouts are per CPython version; tests/unit/test_python_frames.py checks the
ones of the CPython installed here against its own headers (offsetof).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from igdeadlock.host.elf import ElfError, ElfFile

RUNTIME_SYMBOL = "_PyRuntime"
VERSION_SYMBOL = "Py_Version"  # const unsigned long PY_VERSION_HEX, since 3.11


@dataclass(frozen=True)
class PythonLayout:
    """Byte offsets of the fields the frame walk reads (CPython's internal structs)."""

    interpreters_head: int  # _PyRuntimeState.interpreters.head
    tstate_current: int  # _PyRuntimeState.gilstate.tstate_current
    threads_head: int  # PyInterpreterState.threads.head
    tstate_next: int  # PyThreadState.next
    native_thread_id: int  # PyThreadState.native_thread_id
    cframe: int  # PyThreadState.cframe
    current_frame: int  # _PyCFrame.current_frame
    frame_code: int  # _PyInterpreterFrame.f_code
    frame_previous: int  # _PyInterpreterFrame.previous
    frame_prev_instr: int  # _PyInterpreterFrame.prev_instr
    code_adaptive: int  # PyCodeObject.co_code_adaptive (instruction 0)
    # what naming a code object reads
    co_filename: int
    co_qualname: int
    co_firstlineno: int
    co_linetable: int
    ascii_size: int  # sizeof(PyASCIIObject): where a compact ASCII string's characters start
    unicode_state: int  # PyASCIIObject.state
    bytes_size: int  # PyVarObject.ob_size
    bytes_data: int  # PyBytesObject.ob_sval

    def pack(self, runtime: int) -> bytes:
        """The gadget's struct python_layout for a process whose _PyRuntime is at ``runtime``."""
        return struct.pack("<Q19H2x", runtime, self.interpreters_head, self.tstate_current,
                           self.threads_head, self.tstate_next, self.native_thread_id, self.cframe,
                           self.current_frame, self.frame_code, self.frame_previous, self.frame_prev_instr,
                           self.code_adaptive, self.co_filename, self.co_qualname, self.co_firstlineno,
                           self.co_linetable, self.ascii_size, self.unicode_state, self.bytes_size,
                           self.bytes_data)


# CPython 3.11 on 64-bit Linux (Include/internal/pycore_runtime.h, pycore_interp.h,
# pycore_frame.h, cpython/pystate.h, cpython/code.h, cpython/unicodeobject.h).
CPYTHON_3_11 = PythonLayout(
    interpreters_head=40, tstate_current=576, threads_head=16, tstate_next=8, native_thread_id=160,
    cframe=56, current_frame=8, frame_code=32, frame_previous=48, frame_prev_instr=56, code_adaptive=184,
    co_filename=112, co_qualname=128, co_firstlineno=72, co_linetable=136,
    ascii_size=48, unicode_state=32, bytes_size=16, bytes_data=32)
LAYOUTS: Dict[Tuple[int, int], PythonLayout] = {(3, 11): CPYTHON_3_11}


@dataclass(frozen=True)
class PythonProcess:
    version: Tuple[int, int]
    runtime: int  # address of _PyRuntime in the process
    layout: PythonLayout


def _version_of(elf: ElfFile, symbol_value: int) -> Optional[Tuple[int, int]]:
    offset = elf.vaddr_to_offset(symbol_value)
    if offset is None:
        return None
    hexversion = struct.unpack("<Q", elf.read(offset, 8))[0]
    return (hexversion >> 24) & 0xFF, (hexversion >> 16) & 0xFF


def _first_mappings(pid: int) -> List[Tuple[str, str]]:
    """(map_files name, path) of each file's mapping at file offset 0, in address order."""
    try:
        with open(f"/proc/{pid}/maps") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    found: Dict[str, Tuple[str, str]] = {}
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[4] != "0" and int(fields[2], 16) == 0 and fields[5].startswith("/"):
            start, _, end = fields[0].partition("-")
            # map_files names them without leading zeros
            found.setdefault(fields[5], (f"{int(start, 16):x}-{int(end, 16):x}", fields[5]))
    return list(found.values())


def python_process(pid: int) -> Optional[PythonProcess]:
    """The CPython a process runs (its executable or libpython) when its
    version's layout is known; None otherwise."""
    for region, path in _first_mappings(pid):
        name = os.path.basename(path)
        if not (name.startswith("python") or name.startswith("libpython")):
            continue
        try:
            with ElfFile.map(f"/proc/{pid}/map_files/{region}") as elf:
                symbols = elf.find_symbols([RUNTIME_SYMBOL, VERSION_SYMBOL], kinds=None)
                if RUNTIME_SYMBOL not in symbols or VERSION_SYMBOL not in symbols:
                    continue
                version = _version_of(elf, symbols[VERSION_SYMBOL].value)
                base_vaddr = elf.offset_to_vaddr(0) or 0
                runtime = symbols[RUNTIME_SYMBOL].value
        except (OSError, ElfError, struct.error, IndexError):
            continue
        if version not in LAYOUTS:
            return None
        # a shared object or PIE is mapped at a base; ET_EXEC where its addresses say
        bias = int(region.partition("-")[0], 16) - base_vaddr
        return PythonProcess(version, runtime + bias, LAYOUTS[version])
    return None
