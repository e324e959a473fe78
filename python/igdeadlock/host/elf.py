"""A small ELF reader: symbols and segments, enough to turn names into file
offsets (to place uprobes) and file offsets into names (to symbolize stacks),
plus the dynamic-linking facts (interpreter, needed libraries, search paths)
that tell which C library a program will run on.

An ElfFile works on bytes (``ElfFile.open``) or on a read-only mapping of the
file (``ElfFile.map``): executables can be hundreds of megabytes, and a mapping
costs only the pages the reader touches."""

from __future__ import annotations

import bisect
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from typing import Collection, Dict, Iterable, List, Optional, Tuple, Union

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
SHT_SYMTAB, SHT_DYNSYM = 2, 11
SHT_GNU_VERDEF = 0x6FFFFFFD
STT_OBJECT, STT_FUNC, STT_GNU_IFUNC = 1, 2, 10
STB_LOCAL = 0
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00  # SHN_ABS, SHN_COMMON and the like: not in any section of the file
DT_NULL, DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 14, 15, 29
DT_FLAGS_1 = 0x6FFFFFFB
DF_1_NODEFLIB = 0x800
EM_386, EM_X86_64, EM_AARCH64 = 3, 62, 183

Buffer = Union[bytes, mmap.mmap]


class ElfError(ValueError):
    """Not an ELF file, or one this reader cannot use."""


@dataclass(frozen=True)
class Segment:
    offset: int
    vaddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    type: int


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    link: int
    entsize: int
    addr: int


@dataclass(frozen=True)
class DynamicInfo:
    """What the dynamic loader reads from PT_DYNAMIC to find an object's dependencies."""

    needed: Tuple[str, ...] = ()
    soname: Optional[str] = None
    rpath: Optional[str] = None
    runpath: Optional[str] = None
    nodeflib: bool = False  # DF_1_NODEFLIB: skip ld.so.cache and the default directories


class ElfFile:
    """An ELF file read from bytes or from a read-only mapping of the file."""

    def __init__(self, data: Buffer, path: str = "?") -> None:
        if len(data) < 6 or data[:4] != b"\x7fELF":
            raise ElfError(f"{path}: not an ELF file")
        self.path = path
        self._data = data
        self.stat: Optional[os.stat_result] = None  # of the file mapped, set by ElfFile.map
        elf_class, encoding = data[4], data[5]
        if elf_class not in (1, 2) or encoding not in (1, 2):
            raise ElfError(f"{path}: unsupported ELF class/encoding")
        self.is64 = elf_class == 2
        self.order = "<" if encoding == 1 else ">"
        try:
            self._parse_header()
        except struct.error as exc:
            raise ElfError(f"{path}: truncated ELF file") from exc
        self._symbols: Optional[List[Symbol]] = None
        self._starts: List[int] = []

    @classmethod
    def open(cls, path: str) -> "ElfFile":
        with open(path, "rb") as handle:
            return cls(handle.read(), path)

    @classmethod
    def map(cls, path: str) -> "ElfFile":
        """The file mapped read-only; ``stat`` is the opened file's, so callers can
        check it is the file they meant without a race between stat and open.
        Call ``close`` (or use ``with``) when done."""
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ElfError(f"{path}: not a regular file")
            try:
                data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except ValueError as exc:  # an empty file cannot be mapped
                raise ElfError(f"{path}: not an ELF file") from exc
        finally:
            os.close(fd)
        try:
            elf = cls(data, path)
        except BaseException:
            data.close()
            raise
        elf.stat = info
        return elf

    def close(self) -> None:
        """Unmap the file (a no-op for an ElfFile made from bytes)."""
        if isinstance(self._data, mmap.mmap):
            self._data.close()

    def __enter__(self) -> "ElfFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unpack(self, fmt: str, offset: int) -> Tuple:
        return struct.unpack_from(self.order + fmt, self._data, offset)

    def _parse_header(self) -> None:
        if self.is64:
            (self.type, self.machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
             shentsize, shnum, shstrndx) = self._unpack("HHIQQQIHHHHHH", 16)
        else:
            (self.type, self.machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
             shentsize, shnum, shstrndx) = self._unpack("HHIIIIIHHHHHH", 16)
        self.segments: List[Segment] = []
        self.interpreter: Optional[str] = None  # PT_INTERP: the loader of a dynamically linked program
        self._dynamic_segment: Optional[Tuple[int, int]] = None  # PT_DYNAMIC's file offset and size
        for i in range(phnum):
            base = phoff + i * phentsize
            if self.is64:
                p_type, _pflags, offset, vaddr, _paddr, filesz, memsz, _align = self._unpack("IIQQQQQQ", base)
            else:
                p_type, offset, vaddr, _paddr, filesz, memsz, _pflags, _align = self._unpack("IIIIIIII", base)
            if p_type == PT_LOAD:
                self.segments.append(Segment(offset, vaddr, filesz, memsz))
            elif p_type == PT_INTERP:
                self.interpreter = bytes(self._data[offset:offset + filesz]).split(b"\0", 1)[0].decode(
                    "utf-8", "surrogateescape")
            elif p_type == PT_DYNAMIC:
                self._dynamic_segment = (offset, filesz)
        raw: List[Tuple[int, int, int, int, int, int, int]] = []
        for i in range(shnum):
            base = shoff + i * shentsize
            if self.is64:
                name, sh_type, _flags, addr, offset, size, link, _info, _align, entsize = self._unpack(
                    "IIQQQQIIQQ", base)
            else:
                name, sh_type, _flags, addr, offset, size, link, _info, _align, entsize = self._unpack(
                    "IIIIIIIIII", base)
            raw.append((name, sh_type, offset, size, link, entsize, addr))
        names = raw[shstrndx] if 0 <= shstrndx < len(raw) else None
        self.sections: List[Section] = []
        for name, sh_type, offset, size, link, entsize, addr in raw:
            label = self._string(names[2], name) if names else ""
            self.sections.append(Section(label, sh_type, offset, size, link, entsize, addr))

    def _string(self, table_offset: int, index: int) -> str:
        start = table_offset + index
        end = self._data.find(b"\0", start)
        if end < 0:
            end = len(self._data)
        return self._data[start:end].decode("utf-8", "replace")

    def read(self, offset: int, size: int) -> bytes:
        """Bytes of the file (fewer at its end)."""
        return bytes(self._data[offset:offset + size])

    def section(self, name: str) -> Optional[Section]:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    @property
    def has_debug_lines(self) -> bool:
        return self.section(".debug_line") is not None

    def symbols(self) -> List[Symbol]:
        """Defined function and object symbols from .symtab and .dynsym."""
        if self._symbols is None:
            found: Dict[Tuple[int, str], Symbol] = {}
            for sec in self.sections:
                if sec.type not in (SHT_SYMTAB, SHT_DYNSYM) or not sec.entsize:
                    continue
                strtab = self.sections[sec.link].offset if sec.link < len(self.sections) else 0
                for i in range(1, sec.size // sec.entsize):
                    base = sec.offset + i * sec.entsize
                    if self.is64:
                        name, info, _other, shndx, value, size = self._unpack("IBBHQQ", base)
                    else:
                        name, value, size, info, _other, shndx = self._unpack("IIIBBH", base)
                    kind = info & 0xF
                    if shndx == SHN_UNDEF or kind not in (STT_FUNC, STT_OBJECT, STT_GNU_IFUNC) or not name:
                        continue
                    label = self._string(strtab, name)
                    found.setdefault((value, label), Symbol(label, value, size, kind))
            self._symbols = sorted(found.values(), key=lambda s: (s.value, -s.size, s.name))
            self._starts = [s.value for s in self._symbols]
        return self._symbols

    def symbol_at(self, vaddr: int) -> Optional[Tuple[Symbol, int]]:
        """The symbol covering ``vaddr`` and the offset into it."""
        symbols = self.symbols()
        last = bisect.bisect_right(self._starts, vaddr) - 1
        best: Optional[Symbol] = None
        # symbols are sorted by start; a few steps back covers nested/aliased ones
        for sym in symbols[max(last - 63, 0):last + 1]:
            if sym.value <= vaddr < sym.value + max(sym.size, 1):
                if best is None or (best.type == STT_OBJECT and sym.type != STT_OBJECT):
                    best = sym
        if best is None:
            return None
        return best, vaddr - best.value

    def find_symbols(self, names: Iterable[str],
                     kinds: Optional[Collection[int]] = (STT_FUNC, STT_GNU_IFUNC)) -> Dict[str, Symbol]:
        """Defined symbols with these names (of these types; any type if None), from
        .dynsym and .symtab; a global or weak definition wins over a local one.

        Unlike ``symbols`` this decodes no names: it finds where each wanted name
        sits in the string table and compares only the symbols' name indexes, so a
        .symtab of hundreds of thousands of entries costs one pass of integer reads.
        """
        wanted = {name.encode("utf-8", "surrogateescape") for name in names}
        found: Dict[str, Symbol] = {}
        local: Dict[str, Symbol] = {}
        name_index = struct.Struct(self.order + "I")  # st_name comes first in both ELF classes
        for sec in self.sections:
            if sec.type not in (SHT_SYMTAB, SHT_DYNSYM) or not sec.entsize or sec.link >= len(self.sections):
                continue
            indexes = self._string_indexes(self.sections[sec.link], wanted)
            if not indexes:
                continue
            for i in range(1, sec.size // sec.entsize):
                base = sec.offset + i * sec.entsize
                label = indexes.get(name_index.unpack_from(self._data, base)[0])
                if label is None or label in found:
                    continue
                if self.is64:
                    _name, info, _other, shndx, value, size = self._unpack("IBBHQQ", base)
                else:
                    _name, value, size, info, _other, shndx = self._unpack("IIIBBH", base)
                kind = info & 0xF
                if shndx == SHN_UNDEF or shndx >= SHN_LORESERVE or (kinds is not None and kind not in kinds):
                    continue
                symbol = Symbol(label, value, size, kind)
                if info >> 4 == STB_LOCAL:
                    local.setdefault(label, symbol)
                else:
                    found[label] = symbol
        return {**local, **found}

    def _string_indexes(self, table: Section, wanted: Collection[bytes]) -> Dict[int, str]:
        """Every index of a string table at which one of the names starts. Linkers
        share tails ("pthread_mutex_lock" inside "__pthread_mutex_lock"), so a name
        may start in the middle of another one."""
        end = min(table.offset + table.size, len(self._data))
        indexes: Dict[int, str] = {}
        for name in wanted:
            needle = name + b"\0"
            at = self._data.find(needle, table.offset, end)
            while at >= 0:
                indexes[at - table.offset] = name.decode("utf-8", "surrogateescape")
                at = self._data.find(needle, at + 1, end)
        return indexes

    def dynamic(self) -> DynamicInfo:
        """DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH and DF_1_NODEFLIB from PT_DYNAMIC."""
        if self._dynamic_segment is None:
            return DynamicInfo()
        offset, size = self._dynamic_segment
        fmt, step = ("qQ", 16) if self.is64 else ("iI", 8)
        entries: List[Tuple[int, int]] = []
        try:
            for base in range(offset, offset + size - step + 1, step):
                tag, value = self._unpack(fmt, base)
                if tag == DT_NULL:
                    break
                entries.append((tag, value))
        except struct.error as exc:
            raise ElfError(f"{self.path}: truncated dynamic section") from exc
        strtab = next((self.vaddr_to_offset(v) for t, v in entries if t == DT_STRTAB), None)
        if strtab is None:
            return DynamicInfo()

        def text(tag: int) -> Optional[str]:
            return next((self._string(strtab, v) for t, v in entries if t == tag), None)

        flags_1 = next((v for t, v in entries if t == DT_FLAGS_1), 0)
        return DynamicInfo(
            needed=tuple(self._string(strtab, v) for t, v in entries if t == DT_NEEDED),
            soname=text(DT_SONAME), rpath=text(DT_RPATH), runpath=text(DT_RUNPATH),
            nodeflib=bool(flags_1 & DF_1_NODEFLIB))

    def version_definitions(self) -> List[str]:
        """Names of the symbol versions the file defines (.gnu.version_d), e.g.
        "GLIBC_2.2.5"; the first one is usually the file's own soname."""
        sec = next((s for s in self.sections if s.type == SHT_GNU_VERDEF), None)
        if sec is None or sec.link >= len(self.sections):
            return []
        strtab = self.sections[sec.link].offset
        names: List[str] = []
        at = sec.offset
        # vd_next chains the entries; a bound keeps a corrupt chain from looping forever
        for _ in range(4096):
            try:
                _version, _flags, _index, count, _hash, aux, following = self._unpack("HHHHIII", at)
                if count:
                    names.append(self._string(strtab, self._unpack("I", at + aux)[0]))
            except struct.error:
                break
            if not following:
                break
            at += following
        return names

    def find_function(self, name: str) -> Optional[Symbol]:
        for sym in self.symbols():
            if sym.name == name and sym.type in (STT_FUNC, STT_GNU_IFUNC):
                return sym
        return None

    def offset_to_vaddr(self, offset: int) -> Optional[int]:
        for seg in self.segments:
            if seg.offset <= offset < seg.offset + seg.filesz:
                return offset - seg.offset + seg.vaddr
        return None

    def vaddr_to_offset(self, vaddr: int) -> Optional[int]:
        for seg in self.segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return vaddr - seg.vaddr + seg.offset
        return None
