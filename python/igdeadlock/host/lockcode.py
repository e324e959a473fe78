"""Lock implementations a process's files contain that igdeadlock does not trace.

Rust's std and parking_lot, Go's runtime and C++20's atomic waits keep their
uncontended path inline: no function of theirs is called for a lock that is
free, so no probe can see it, and a quiet program using them would look clean.
They are recognised from the names a file keeps (its symbol tables, Go's
function table) or, in a stripped file, its read-only strings, once per file,
so that such a process's report says what it cannot see from the start, not
only once one of its threads waits (findings.process_coverage).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from igdeadlock.host.elf import ElfError, ElfFile
from igdeadlock.host.locklib import FileId, parse_maps


@dataclass(frozen=True)
class LockCode:
    """One lock implementation igdeadlock cannot trace, and how to recognise it."""

    name: str  # what it is, as the report names it
    names: Tuple[bytes, ...] = ()  # any of these in the file's symbol names
    strings: Tuple[bytes, ...] = ()  # or, in a file without a .symtab, in its read-only data
    sections: Tuple[str, ...] = ()  # or any of these sections


UNTRACED_LOCK_CODE: Tuple[LockCode, ...] = (
    # std::sync::Mutex and RwLock on Linux since Rust 1.62: an atomic word and
    # futex syscalls of their own (legacy and v0 manglings end the same way)
    LockCode("Rust std's futex-based Mutex/RwLock",
             names=(b"5Mutex14lock_contended", b"6RwLock14read_contended", b"6RwLock15write_contended"),
             strings=(b"library/std/src/sys/sync/", b"library/std/src/sys/unix/locks/",
                      b"library/std/src/sys/pal/unix/locks/")),
    LockCode("Rust parking_lot", names=(b"11parking_lot", b"16parking_lot_core"),
             strings=(b"parking_lot_core-", b"parking_lot-")),
    # goroutines block in Go's scheduler; its runtime's own locks sleep on futexes
    LockCode("Go's sync.Mutex/RWMutex and runtime locks", sections=(".gopclntab", ".go.buildinfo")),
    LockCode("C++20 std::atomic wait (locks and semaphores built on it)",
             names=(b"__platform_wait", b"__atomic_wait_address")),
)

# Files that are the C library and its loader: their locks are the traced ones.
_C_LIBRARY_NAMES = ("libc.so", "libc-", "ld-linux", "ld-musl", "libpthread", "libc.musl")
_SYMBOL_TABLES = (".strtab", ".dynstr")
_READ_ONLY_DATA = (".rodata",)


@dataclass(frozen=True)
class FoundLockCode:
    implementation: str  # LockCode.name
    file: str  # as the process sees it


def lock_code_in(elf: ElfFile, kinds: Sequence[LockCode] = UNTRACED_LOCK_CODE) -> List[str]:
    """The untraced lock implementations one ELF file contains, by name."""
    tables = [elf.read(s.offset, s.size) for name in _SYMBOL_TABLES if (s := elf.section(name)) is not None]
    stripped = elf.section(".symtab") is None
    rodata: Optional[List[bytes]] = None
    found = []
    for kind in kinds:
        if any(elf.section(name) is not None for name in kind.sections) or \
                any(marker in table for marker in kind.names for table in tables):
            found.append(kind.name)
            continue
        if stripped and kind.strings:
            if rodata is None:
                rodata = [elf.read(s.offset, s.size) for name in _READ_ONLY_DATA
                          if (s := elf.section(name)) is not None]
            if any(marker in data for marker in kind.strings for data in rodata):
                found.append(kind.name)
    return found


class LockCodeScanner:
    """Recognises untraced lock code in processes' files; reads each file once."""

    def __init__(self, kinds: Sequence[LockCode] = UNTRACED_LOCK_CODE) -> None:
        self.kinds = tuple(kinds)
        self._files: Dict[Tuple[FileId, int, int], Tuple[str, ...]] = {}

    def _scan(self, path: str, expected: Optional[FileId] = None) -> Optional[Tuple[str, ...]]:
        try:
            elf = ElfFile.map(path)
        except (OSError, ElfError, ValueError):
            return None
        with elf:
            assert elf.stat is not None
            file = FileId.of(elf.stat)
            if expected is not None and file != expected:
                return None  # another file of that name (ours, not the process's)
            key = (file, elf.stat.st_size, elf.stat.st_mtime_ns)
            known = self._files.get(key)
            if known is None:
                try:
                    known = self._files[key] = tuple(lock_code_in(elf, self.kinds))
                except (ElfError, IndexError, ValueError):
                    return None
            return known

    def _found(self, pid: int, files: Iterable[Tuple[str, Sequence[str], Optional[FileId]]]
               ) -> List[FoundLockCode]:
        found: Dict[str, FoundLockCode] = {}
        for path, places, expected in files:
            if not path.startswith("/") or os.path.basename(path).startswith(_C_LIBRARY_NAMES):
                continue
            for where in places:
                names = self._scan(where, expected)
                if names is not None:
                    for name in names:
                        found.setdefault(name, FoundLockCode(name, path))
                    break
        return list(found.values())

    def in_process(self, pid: int, objects: Sequence[str] = ()) -> List[FoundLockCode]:
        """What a process's mapped files contain, or, when its mappings cannot
        be read (gone, or not mapped yet), these files of ours that it maps."""
        try:
            with open(f"/proc/{pid}/maps") as handle:
                mapped = parse_maps(handle.read())
        except OSError:
            mapped = []
        if not mapped:
            return self._found(pid, ((path, (path,), None) for path in dict.fromkeys(objects)))
        regions = {r.file: r for r in reversed(mapped) if not r.deleted}  # the first region of each file
        return self._found(pid, ((r.path, (r.path, f"/proc/{pid}/root{r.path}", f"/proc/{pid}/map_files/{r.range}"),
                                  r.file) for r in regions.values()))
