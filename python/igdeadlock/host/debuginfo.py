"""Separate debug information for stripped binaries (what distributions ship):
found by build id under /usr/lib/debug/.build-id, by the binary's
.gnu_debuglink, or fetched from the debuginfod servers in DEBUGINFOD_URLS.
"""

from __future__ import annotations

import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from typing import Callable, Optional, Sequence, Tuple

from igdeadlock.host.elf import ElfError, ElfFile

DEBUG_ROOT = "/usr/lib/debug"
NT_GNU_BUILD_ID = 3
DEBUGINFOD_TIMEOUT = 10.0  # seconds per server


def build_id(elf: ElfFile) -> Optional[str]:
    """The GNU build id (hex), from the .note.gnu.build-id note."""
    section = elf.section(".note.gnu.build-id")
    if section is None:
        return None
    data = elf.read(section.offset, section.size)
    if len(data) < 12:
        return None
    namesz, descsz, kind = struct.unpack_from(elf.order + "III", data, 0)
    start = 12 + (namesz + 3) // 4 * 4
    if kind != NT_GNU_BUILD_ID or data[12:12 + namesz].rstrip(b"\0") != b"GNU" or start + descsz > len(data):
        return None
    return data[start:start + descsz].hex()


def debuglink(elf: ElfFile) -> Optional[Tuple[str, int]]:
    """(file name, CRC-32 of the debug file) from .gnu_debuglink."""
    section = elf.section(".gnu_debuglink")
    if section is None:
        return None
    data = elf.read(section.offset, section.size)
    name, _, _ = data.partition(b"\0")
    crc_at = (len(name) + 1 + 3) // 4 * 4
    if not name or crc_at + 4 > len(data):
        return None
    return name.decode("utf-8", "replace"), struct.unpack_from(elf.order + "I", data, crc_at)[0]


def _crc32(path: str) -> Optional[int]:
    crc = 0
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                crc = zlib.crc32(block, crc)
    except OSError:
        return None
    return crc & 0xFFFFFFFF


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "igdeadlock", "debuginfod")


def fetch_from_debuginfod(identifier: str, urls: Sequence[str], cache: Optional[str] = None) -> Optional[str]:
    """The debug file of a build id from the first debuginfod server that has it
    (kept in the cache: asked once)."""
    directory = cache or cache_dir()
    path = os.path.join(directory, f"{identifier}.debug")
    if os.path.exists(path):
        return path
    for url in urls:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/buildid/{identifier}/debuginfo",
                                        timeout=DEBUGINFOD_TIMEOUT) as response:
                data = response.read()
        except (OSError, ValueError, urllib.error.URLError):
            continue  # that server does not have it, or cannot be reached
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, delete=False) as handle:
            handle.write(data)
        os.replace(handle.name, path)
        return path
    return None


class DebugFiles:
    """Finds the debug file of a binary; remembers what it found."""

    def __init__(self, roots: Sequence[str] = (DEBUG_ROOT,),
                 debuginfod_urls: Optional[Sequence[str]] = None,
                 fetch: Callable[[str, Sequence[str]], Optional[str]] = fetch_from_debuginfod) -> None:
        self.roots = tuple(roots)
        urls = os.environ.get("DEBUGINFOD_URLS", "") if debuginfod_urls is None else " ".join(debuginfod_urls)
        self.urls = tuple(urls.split())
        self.fetch = fetch
        self._found: dict = {}

    def for_binary(self, path: str, elf: ElfFile) -> Optional[Tuple[str, ElfFile]]:
        """The debug file of the binary at ``path`` (opened), or None."""
        if path in self._found:
            return self._found[path]
        found = None
        for candidate in self._candidates(path, elf):
            try:
                debug = ElfFile.open(candidate)
            except (OSError, ElfError):
                continue
            if debug.symbols() or debug.has_debug_lines:
                found = (candidate, debug)
                break
        self._found[path] = found
        return found

    def _candidates(self, path: str, elf: ElfFile):
        identifier = build_id(elf)
        if identifier and len(identifier) > 2:
            for root in self.roots:
                yield os.path.join(root, ".build-id", identifier[:2], identifier[2:] + ".debug")
        link = debuglink(elf)
        if link is not None:
            name, crc = link
            directory = os.path.dirname(path)
            for candidate in (os.path.join(directory, name), os.path.join(directory, ".debug", name),
                              *(os.path.join(root + directory, name) for root in self.roots)):
                if os.path.exists(candidate) and _crc32(candidate) == crc:
                    yield candidate
        if identifier and self.urls:
            fetched = self.fetch(identifier, self.urls)
            if fetched:
                yield fetched
