"""Stripped binaries are symbolized from separate debug files: by .gnu_debuglink,
by build id under a debug root, or from a debuginfod server (a real local one)."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from helpers import PROGRAMS
from igdeadlock.host.debuginfo import DebugFiles, build_id, debuglink, fetch_from_debuginfod
from igdeadlock.host.elf import ElfFile
from igdeadlock.host.symbolize import Symbolizer
from igdeadlock.records import MappedFile, StackTrace

FUNCTION = "lock_a_then_b"


@pytest.fixture(scope="module")
def stripped(tmp_path_factory) -> Tuple[Path, Path, Path]:
    """(program built with -g, the same stripped with a debuglink, its debug file)."""
    directory = tmp_path_factory.mktemp("debuginfo")
    full = directory / "abba-full"
    subprocess.run(["gcc", "-g", "-O0", "-pthread", "-Wl,--build-id", "-o", str(full), str(PROGRAMS / "abba.c")],
                   check=True)
    debug = directory / "abba.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(full), str(debug)], check=True)
    binary = directory / "abba"
    shutil.copy(full, binary)
    subprocess.run(["strip", "--strip-all", str(binary)], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", str(binary)], cwd=directory, check=True)
    return full, binary, debug


def frame_of(binary: Path, debug_files: DebugFiles):
    """Symbolize the call of pthread_mutex_lock in FUNCTION, as a stack frame of the stripped binary."""
    full = ElfFile.open(str(binary.parent / "abba-full"))
    symbol = next(s for s in full.symbols() if s.name == FUNCTION)
    offset = full.vaddr_to_offset(symbol.value + 20)  # a return address inside the function
    mapped = MappedFile(7, os.stat(binary).st_ino, 0, str(binary))
    (frame,) = Symbolizer({7: mapped}, debug_files=debug_files).resolve(StackTrace(1, os.getpid(), ((7, offset),)))
    return frame


def test_a_stripped_binary_has_no_names_of_its_own(stripped, tmp_path):
    alone = tmp_path / "abba"  # its debug file is not next to it
    shutil.copy(stripped[1], alone)
    shutil.copy(stripped[0], tmp_path / "abba-full")
    assert frame_of(alone, DebugFiles(roots=(), debuginfod_urls=[])).function is None


def test_debuglink_next_to_the_binary(stripped):
    _, binary, debug = stripped
    name, crc = debuglink(ElfFile.open(str(binary)))
    assert name == debug.name
    frame = frame_of(binary, DebugFiles(roots=(), debuginfod_urls=[]))
    assert frame.function == FUNCTION and frame.source.startswith("abba.c:")


def test_build_id_under_a_debug_root(stripped, tmp_path):
    _, binary, debug = stripped
    identifier = build_id(ElfFile.open(str(binary)))
    assert identifier == build_id(ElfFile.open(str(debug)))
    moved = tmp_path / "bin" / "abba"  # away from its debuglink target
    moved.parent.mkdir()
    shutil.copy(binary, moved)
    shutil.copy(stripped[0], tmp_path / "bin" / "abba-full")
    target = tmp_path / "debug" / ".build-id" / identifier[:2] / f"{identifier[2:]}.debug"
    target.parent.mkdir(parents=True)
    shutil.copy(debug, target)
    assert frame_of(moved, DebugFiles(roots=(), debuginfod_urls=[])).function is None
    frame = frame_of(moved, DebugFiles(roots=(str(tmp_path / "debug"),), debuginfod_urls=[]))
    assert frame.function == FUNCTION and frame.source.startswith("abba.c:")


@pytest.fixture
def debuginfod(stripped, tmp_path) -> Iterator[str]:
    """A real HTTP server answering /buildid/ID/debuginfo as debuginfod does."""
    _, binary, debug = stripped
    identifier = build_id(ElfFile.open(str(binary)))
    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(self.path)
            if self.path != f"/buildid/{identifier}/debuginfo":
                self.send_error(404)
                return
            data = debug.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    assert asked


def test_debuginfod_when_asked_to(stripped, debuginfod, tmp_path, monkeypatch):
    _, binary, _ = stripped
    moved = tmp_path / "elsewhere" / "abba"
    moved.parent.mkdir()
    shutil.copy(binary, moved)
    shutil.copy(stripped[0], tmp_path / "elsewhere" / "abba-full")
    cache = tmp_path / "cache"
    files = DebugFiles(roots=(), debuginfod_urls=["http://127.0.0.1:1", debuginfod],  # the first one is down
                       fetch=lambda identifier, urls: fetch_from_debuginfod(identifier, urls, str(cache)))
    frame = frame_of(moved, files)
    assert frame.function == FUNCTION and frame.source.startswith("abba.c:")
    assert len(list(cache.iterdir())) == 1  # kept: asked once
    monkeypatch.setenv("DEBUGINFOD_URLS", debuginfod)
    assert DebugFiles().urls == (debuginfod,)
