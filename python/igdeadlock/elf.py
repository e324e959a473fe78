"""A small ELF reader: symbols and segments, enough to turn names into file
offsets (to place uprobes) and file offsets into names (to symbolize stacks)."""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

PT_LOAD = 1
SHT_SYMTAB, SHT_DYNSYM = 2, 11
STT_OBJECT, STT_FUNC, STT_GNU_IFUNC = 1, 2, 10
SHN_UNDEF = 0


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


class ElfFile:
    """An ELF file read once into memory (libraries and test programs are small)."""

    def __init__(self, data: bytes, path: str = "?") -> None:
        if data[:4] != b"\x7fELF":
            raise ElfError(f"{path}: not an ELF file")
        self.path = path
        self._data = data
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

    def _unpack(self, fmt: str, offset: int) -> Tuple:
        return struct.unpack_from(self.order + fmt, self._data, offset)

    def _parse_header(self) -> None:
        if self.is64:
            (self.type, _machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
             shentsize, shnum, shstrndx) = self._unpack("HHIQQQIHHHHHH", 16)
        else:
            (self.type, _machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
             shentsize, shnum, shstrndx) = self._unpack("HHIIIIIHHHHHH", 16)
        self.segments: List[Segment] = []
        for i in range(phnum):
            base = phoff + i * phentsize
            if self.is64:
                p_type, _pflags, offset, vaddr, _paddr, filesz, memsz, _align = self._unpack("IIQQQQQQ", base)
            else:
                p_type, offset, vaddr, _paddr, filesz, memsz, _pflags, _align = self._unpack("IIIIIIII", base)
            if p_type == PT_LOAD:
                self.segments.append(Segment(offset, vaddr, filesz, memsz))
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
