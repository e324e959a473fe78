"""The real file behind a path on an overlay mount (a container's root).

Uprobes are placed on the real file (the layer's copy), but /proc/PID/maps
names a container's files by the overlay mount's device: two containers of one
image show one library under two devices. Probing it once per device would
fire every probe twice in both. The layer a path comes from is found the way
overlayfs finds it: the upper directory, then each lower one, top down.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import List, Optional, Tuple

OVERLAY = "overlay"


@dataclass(frozen=True)
class Mount:
    root: str  # the directory of the filesystem mounted (field 4 of mountinfo)
    point: str  # where it is mounted, as the process sees it
    fs_type: str
    options: str  # the filesystem's own (super block) options


def unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 4].isdigit() and i + 4 <= len(text):
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> List[Mount]:
    mounts = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        mounts.append(Mount(unescape(fields[3]), unescape(fields[4]), tail[0], unescape(tail[2])))
    return mounts


def mount_of(mounts: List[Mount], path: str) -> Optional[Mount]:
    """The mount a path is on: the last one mounted at its longest matching prefix."""
    best: Optional[Mount] = None
    for mount in mounts:
        point = mount.point.rstrip("/")
        if path == mount.point or path.startswith(point + "/") or mount.point == "/":
            if best is None or len(mount.point) >= len(best.point):
                best = mount
    return best


def _split(text: str, separator: str) -> List[str]:
    """Split on separators not escaped with a backslash (overlay's own escaping)."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def overlay_layers(options: str) -> List[str]:
    """The directories an overlay looks in, top down: upperdir, then lowerdir
    (and the lowerdir+ / datadir+ options of the new mount API)."""
    upper: List[str] = []
    lower: List[str] = []
    for option in _split(options, ","):
        name, _, value = option.partition("=")
        if name == "upperdir":
            upper = [value]
        elif name == "lowerdir":
            lower += [layer for layer in _split(value, ":") if layer]
        elif name in ("lowerdir+", "datadir+"):
            lower.append(value)
    return upper + lower


def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def real_file(pid: int, path: str, seen: os.stat_result) -> Tuple[bool, Optional[str]]:
    """(on an overlay, the real path) for `path` as process `pid` sees it.

    (False, None): not on an overlay, the path is the file. (True, path): the
    layer's copy, the same size and age as the file the process maps. (True,
    None): on an overlay, but its layer cannot be told (not reachable from
    here, or changed)."""
    try:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            mount = mount_of(parse_mountinfo(handle.read()), path)
    except OSError:
        return False, None
    if mount is None or mount.fs_type != OVERLAY:
        return False, None
    inside = path[len(mount.point.rstrip("/")):] if mount.point != "/" else path
    relative = os.path.join(mount.root, inside.lstrip("/")).lstrip("/")
    for layer in overlay_layers(mount.options):
        candidate = os.path.join(layer, relative)
        try:
            info = os.stat(candidate)
            if _is_whiteout(os.lstat(candidate)):
                return True, None
        except OSError:
            continue
        if info.st_size == seen.st_size and info.st_mtime_ns == seen.st_mtime_ns:
            return True, candidate
        return True, None
    return True, None
