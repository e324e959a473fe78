"""Stack frames (mapped file + offset) -> function+offset and file:line.

The gadget resolves every frame to the file it points into and the offset in
that file while the process still runs, so frames can be symbolized after the
process is gone (files that are then out of reach, such as a removed
container's, are kept open meanwhile: keeper.py). Names come from the ELF
symbol tables; source lines come from binutils' addr2line when the file has
DWARF line information. A stripped file's names and lines come from its
separate debug file (see debuginfo.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from igdeadlock.host.debuginfo import DebugFiles
from igdeadlock.host.elf import ElfError, ElfFile
from igdeadlock.host.keeper import MappedFileKeeper
from igdeadlock.records import Frame, MappedFile, StackTrace

# Rust's crate disambiguators (v0 mangling: "std[e28293b1aa0f68bd]") and
# symbol hashes (legacy mangling: "::h0123456789abcdef"): noise in a report.
_RUST_HASHES = re.compile(r"\[[0-9a-f]{16}\]|::h[0-9a-f]{16}$")


def _demangle(names: Sequence[str]) -> Dict[str, str]:
    # C++ and Rust's legacy scheme start with _Z, Rust's v0 scheme with _R
    mangled = sorted({n for n in names if n.startswith(("_Z", "_R"))})
    tool = shutil.which("c++filt")
    if not mangled or tool is None:
        return {}
    try:
        out = subprocess.run([tool], input="\n".join(mangled), capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = out.stdout.splitlines()
    if len(lines) != len(mangled):
        return {}
    return {name: _RUST_HASHES.sub("", line) for name, line in zip(mangled, lines)}


class Symbolizer:
    """Resolves frames of one run; caches ELF files and source lookups."""

    def __init__(self, files: Mapping[int, MappedFile], use_addr2line: bool = True,
                 debug_files: Optional[DebugFiles] = None, keeper: Optional[MappedFileKeeper] = None) -> None:
        self.files = files
        self.keeper = keeper  # files of processes that may be gone, opened while they ran
        self.debug_files = debug_files if debug_files is not None else DebugFiles()
        self._elves: Dict[Tuple[str, int], Optional[Tuple[str, ElfFile]]] = {}
        # binary path -> (ELF with its symbols, file with its line information or None)
        self._debug: Dict[str, Tuple[ElfFile, Optional[str]]] = {}
        self._lines: Dict[Tuple[str, int], Optional[Tuple[str, int]]] = {}
        self._addr2line = shutil.which("addr2line") if use_addr2line else None

    def _open(self, mapped: MappedFile, pid: int) -> Optional[Tuple[str, ElfFile]]:
        key = (mapped.path, pid)
        if key in self._elves:
            return self._elves[key]
        result = None
        if mapped.path:
            for candidate, check in self._candidates(mapped, pid):
                try:
                    st = os.stat(candidate)
                    if check and mapped.inode and st.st_ino != mapped.inode:
                        continue
                    result = (candidate, ElfFile.open(candidate))
                    break
                except (OSError, ElfError):
                    continue
        self._elves[key] = result
        return result

    def _candidates(self, mapped: MappedFile, pid: int) -> Iterator[Tuple[str, bool]]:
        """Paths that may open the file, and whether its inode is to be checked:
        the file as the process saw it (its mount namespace), as we see it, and as
        kept open while the session ran (checked when it was opened)."""
        yield f"/proc/{pid}/root{mapped.path}", True
        yield mapped.path, True
        kept = self.keeper.path(mapped.file_id) if self.keeper is not None else None
        if kept is not None:
            yield kept, False

    def resolve(self, stack: StackTrace) -> List[Frame]:
        # Every frame is a return address: it points just after the call, so
        # names and lines are looked up at the address before it.
        located = []
        wanted: Dict[str, set] = {}
        for file_id, offset in stack.frames:
            mapped = self.files.get(file_id) if file_id else None
            opened = self._open(mapped, stack.pid) if mapped is not None else None
            vaddr = opened[1].offset_to_vaddr(offset) if opened is not None else None
            located.append((offset, mapped, opened, vaddr))
            if opened is not None and vaddr is not None:
                lines_in = self._names_and_lines(*opened)[1]
                if lines_in is not None:
                    wanted.setdefault(lines_in, set()).add(vaddr - 1)
        sources = self._sources(wanted)
        frames: List[Frame] = []
        for offset, mapped, opened, vaddr in located:
            if mapped is None:
                frames.append(Frame(address=offset))
                continue
            if opened is None or vaddr is None:
                frames.append(Frame(address=offset, file=mapped.path or None))
                continue
            names_in, lines_in = self._names_and_lines(*opened)
            hit = names_in.symbol_at(vaddr - 1)
            function, function_offset = (hit[0].name, hit[1] + 1) if hit else (None, 0)
            source_file, line = (sources.get((lines_in, vaddr - 1)) if lines_in else None) or (None, None)
            frames.append(Frame(offset, mapped.path, function, function_offset, source_file, line))
        names = _demangle([f.function for f in frames if f.function])
        if names:
            frames = [Frame(f.address, f.file, names.get(f.function or "", f.function), f.function_offset,
                            f.source_file, f.line) for f in frames]
        return frames

    def _names_and_lines(self, path: str, elf: ElfFile) -> Tuple[ElfFile, Optional[str]]:
        """Where a binary's names and source lines are: in itself, or (stripped) in
        its separate debug file."""
        known = self._debug.get(path)
        if known is None:
            names, lines = elf, (path if elf.has_debug_lines else None)
            stripped = elf.section(".symtab") is None  # only the dynamic symbols are left
            if lines is None or stripped:
                debug = self.debug_files.for_binary(path, elf)
                if debug is not None:
                    if stripped and debug[1].section(".symtab") is not None:
                        names = debug[1]
                    if lines is None and debug[1].has_debug_lines:
                        lines = debug[0]
            known = self._debug[path] = (names, lines)
        return known

    def _sources(self, wanted: Mapping[str, Iterable[int]]) -> Dict[Tuple[str, int], Optional[Tuple[str, int]]]:
        result: Dict[Tuple[str, int], Optional[Tuple[str, int]]] = {}
        for path, addresses in wanted.items():
            todo = sorted({a for a in addresses if (path, a) not in self._lines})
            if todo and self._addr2line:
                try:
                    out = subprocess.run(
                        [self._addr2line, "-e", path] + [f"0x{a:x}" for a in todo],
                        capture_output=True, text=True, timeout=30, check=True,
                    ).stdout.splitlines()
                except (OSError, subprocess.SubprocessError):
                    out = []
                for address, line in zip(todo, out):
                    self._lines[(path, address)] = _source_line(line)
            for a in addresses:
                result[(path, a)] = self._lines.get((path, a))
        return result


def _source_line(line: str) -> Optional[Tuple[str, int]]:
    """``/src/dir/file.c:12 (discriminator 1)`` -> (``/src/dir/file.c``, 12); None if unknown."""
    line = line.split(" (", 1)[0].strip()
    if not line or line.startswith("??"):
        return None
    path, _, number = line.rpartition(":")
    if not number.isdigit() or number == "0":
        return None
    return path, int(number)
