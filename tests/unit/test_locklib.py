"""Which file holds a process's pthread lock functions: real programs built here
(glibc, a copied glibc, musl, static, stripped, Go, scripts), inspected running
(for_process) and before they run (for_command), checked against readelf and
against what the kernel's uprobes count."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, Mapping, Optional, Sequence

import pytest

from helpers import BIN_CACHE, compile_program
from igdeadlock.host.bpf import machine, syscall
from igdeadlock.host.elf import ElfFile
from igdeadlock.host.locklib import (
    GLIBC,
    MUSL,
    REASON_EXITED,
    REASON_GO,
    REASON_STATIC,
    CommandError,
    FileId,
    LockLibrary,
    LockLibraryFinder,
    MappedRegion,
    ProcessLibrary,
    parse_ld_so_cache,
    parse_maps,
)

SYMBOLS = ("pthread_mutex_lock", "pthread_mutex_unlock", "pthread_mutex_trylock")
PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}  # syscall numbers
PERF_ATTR_SIZE = 120
PERF_FLAG_FD_CLOEXEC = 8
UPROBE_PMU_TYPE = "/sys/bus/event_source/devices/uprobe/type"
GO = shutil.which("go") or "/usr/local/go/bin/go"
GO_SOURCE = """package main

import "os"

func main() { os.Stdout.WriteString("ready\\n"); os.Stdin.Read(make([]byte, 1)) }
"""
CGO_SOURCE = """package main

// #include <unistd.h>
import "C"

import "os"

func main() { C.getpid(); os.Stdout.WriteString("ready\\n"); os.Stdin.Read(make([]byte, 1)) }
"""


# --- helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def finder() -> LockLibraryFinder:
    return LockLibraryFinder(SYMBOLS)  # one for the module: files are parsed once


def host_libc() -> str:
    """The glibc this test process runs on, as the kernel names it."""
    with open("/proc/self/maps") as maps:
        for mapped in parse_maps(maps.read()):
            if os.path.basename(mapped.path) == "libc.so.6":
                return mapped.path
    raise AssertionError("this Python runs on no libc.so.6")


def file_id(path: str) -> FileId:
    return FileId.of(os.stat(path))


def clean_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    env.update(extra)
    return env


def readelf_offsets(path: str, names: Iterable[str]) -> Dict[str, int]:
    """File offsets of global functions according to binutils' readelf."""
    wanted = set(names)
    listing = subprocess.run(["readelf", "-sW", path], capture_output=True, text=True, check=True).stdout
    values: Dict[str, int] = {}
    for line in listing.splitlines():
        f = line.split()
        if len(f) >= 8 and f[3] == "FUNC" and f[4] != "LOCAL" and f[6] != "UND" and f[7].split("@")[0] in wanted:
            values.setdefault(f[7].split("@")[0], int(f[1], 16))
    headers = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True, check=True).stdout
    loads = [(int(f[1], 16), int(f[2], 16), int(f[4], 16)) for f in map(str.split, headers.splitlines())
             if f and f[0] == "LOAD"]
    return {name: next(value - vaddr + offset for offset, vaddr, size in loads if vaddr <= value < vaddr + size)
            for name, value in values.items()}


@contextlib.contextmanager
def running(argv: Sequence[object], env: Optional[Mapping[str, str]] = None) -> Iterator[subprocess.Popen]:
    """A waitline-like program, started and waiting on stdin."""
    process = subprocess.Popen([str(a) for a in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=dict(env) if env is not None else clean_env())
    try:
        assert process.stdout.readline() == "ready\n", f"{argv} did not start"
        yield process
    finally:
        process.stdin.close()  # end of input: the program exits
        process.wait(timeout=10)
        process.stdout.close()


def lock_lines(process: subprocess.Popen, count: int) -> None:
    """Make a waitline process call pthread_mutex_lock ``count`` times."""
    for _ in range(count):
        process.stdin.write("x\n")
        process.stdin.flush()
        assert process.stdout.readline().startswith("locked ")


@contextlib.contextmanager
def uprobe_counter(library: LockLibrary, symbol: str, pid: int) -> Iterator[int]:
    """A counting uprobe perf event on the library's open_path (what the tracer
    hands to perf_event_open), for one process; yields its fd."""
    with open(UPROBE_PMU_TYPE) as handle:
        pmu_type = int(handle.read())
    path = ctypes.create_string_buffer(library.open_path.encode())
    attr = ctypes.create_string_buffer(PERF_ATTR_SIZE)
    ctypes.c_uint32.from_buffer(attr, 0).value = pmu_type
    ctypes.c_uint32.from_buffer(attr, 4).value = PERF_ATTR_SIZE
    ctypes.c_uint64.from_buffer(attr, 56).value = ctypes.addressof(path)  # config1
    ctypes.c_uint64.from_buffer(attr, 64).value = library.offsets[symbol]  # config2
    fd = syscall(PERF_EVENT_OPEN[machine()], attr, ctypes.c_int(pid), ctypes.c_int(-1), ctypes.c_int(-1),
                 ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    try:
        yield fd
    finally:
        os.close(fd)


def counted(fd: int) -> int:
    return struct.unpack("Q", os.read(fd, 8))[0]


def assert_library(result: ProcessLibrary, path: str, flavor: str, static: bool,
                   open_path: Optional[str] = None) -> None:
    """Exact expectations for a traceable process; offsets checked against readelf."""
    assert result.reason == ""
    library = result.library
    assert library is not None
    assert library.path == path
    assert library.open_path == (open_path or path)
    assert library.file == file_id(library.open_path)
    assert (library.flavor, library.static) == (flavor, static)
    # only what the file defines (a static program lacks the functions it never calls)
    assert dict(library.offsets) == readelf_offsets(library.open_path, SYMBOLS)
    assert {"pthread_mutex_lock", "pthread_mutex_unlock"} <= set(library.offsets)


def comm_of(path: object) -> str:
    return os.path.basename(str(path))[:15]


def waitline(flags: Sequence[str] = ("-O0", "-g"), compiler: Optional[str] = None) -> Path:
    return compile_program("waitline", tuple(flags), compiler)


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (make setup-packages)")
    return found


@pytest.fixture(scope="module")
def glibc_copies() -> Path:
    """Two copies (a/ and b/) of the host's libc.so.6 and loader, kept with the
    compiled programs so that programs linked against them stay cached."""
    loader = os.path.realpath(ElfFile.open(str(waitline())).interpreter or "")
    libc = host_libc()
    digest = hashlib.sha256(Path(libc).read_bytes() + Path(loader).read_bytes()).hexdigest()[:12]
    root = BIN_CACHE / f"glibc-copy-{digest}"
    for copy in ("a", "b"):
        directory = root / copy
        if not (directory / "done").exists():
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copy2(libc, directory / "libc.so.6")
            shutil.copy2(loader, directory / os.path.basename(loader))
            (directory / "done").touch()
    return root


def go_program(source: str, cgo: bool) -> Path:
    """A Go program that says "ready" and waits on stdin, built once."""
    digest = hashlib.sha256(source.encode() + (b" cgo" if cgo else b"")).hexdigest()[:12]
    binary = BIN_CACHE / f"go-waitline-{digest}"
    if not binary.exists():
        if not os.access(GO, os.X_OK):
            pytest.skip("the Go toolchain is not installed")
        workdir = BIN_CACHE / f"go-src-{digest}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "main.go").write_text(source)
        env = {**os.environ, "CGO_ENABLED": "1" if cgo else "0", "GOTOOLCHAIN": "local", "GO111MODULE": "off"}
        if "HOME" not in env and "GOCACHE" not in env:  # go needs somewhere to keep its build cache
            env["GOCACHE"] = str(BIN_CACHE / "go-cache")
        subprocess.run([GO, "build", "-o", str(binary.with_suffix(".tmp")), "main.go"], cwd=workdir, env=env,
                       check=True)
        binary.with_suffix(".tmp").rename(binary)
    return binary


# --- glibc ----------------------------------------------------------------------


def test_dynamic_glibc_program_running_and_before_it_runs(finder):
    program = waitline()
    libc = host_libc()
    with running([program]) as process:
        seen = finder.for_process(process.pid)
        assert (seen.pid, seen.comm, seen.exe) == (process.pid, comm_of(program), str(program))
        assert_library(seen, libc, GLIBC, static=False)
        assert seen.library.file == file_id(libc)
    planned = finder.for_command([str(program)], clean_env(), str(BIN_CACHE))
    assert (planned.pid, planned.comm, planned.exe) == (0, comm_of(program), str(program))
    assert planned.library == seen.library


def test_a_program_found_through_path_and_relative_to_cwd(finder):
    program = waitline()
    by_path = finder.for_command([program.name], clean_env(PATH=f"/nonexistent:{program.parent}"), "/")
    relative = finder.for_command([f"./{program.name}"], clean_env(), str(program.parent))
    assert by_path.exe == relative.exe == str(program)
    assert by_path.library == relative.library
    assert by_path.library is not None and by_path.library.path == host_libc()


def copied_glibc_cases(copies: Path, program: Path) -> Dict[str, tuple]:
    """name -> (command, environment, the copy whose libc it must run on)."""
    a, b = copies / "a", copies / "b"
    host_loader = os.path.realpath(ElfFile.open(str(program)).interpreter or "")
    own_loader = f"-Wl,--dynamic-linker={a}/{os.path.basename(host_loader)}"
    return {
        "its own loader and DT_RUNPATH": ([waitline(("-O0", own_loader, f"-Wl,-rpath,{a}"))], {}, a),
        "host loader and LD_LIBRARY_PATH": ([program], {"LD_LIBRARY_PATH": f"/nonexistent:{a}"}, a),
        "LD_LIBRARY_PATH before DT_RUNPATH": (
            [waitline(("-O0", "-Wl,--enable-new-dtags", f"-Wl,-rpath,{a}"))], {"LD_LIBRARY_PATH": str(b)}, b),
        "DT_RPATH before LD_LIBRARY_PATH": (
            [waitline(("-O0", "-Wl,--disable-new-dtags", f"-Wl,-rpath,{a}"))], {"LD_LIBRARY_PATH": str(b)}, a),
        "$ORIGIN in DT_RPATH": (
            [waitline(("-O0", "-Wl,--disable-new-dtags", f"-Wl,-rpath,$ORIGIN/{copies.name}/a"))], {}, a),
        "the loader run as a command with --library-path": (
            [host_loader, "--library-path", str(b), program], {"LD_LIBRARY_PATH": str(a)}, b),
    }


@pytest.mark.parametrize("case", ["its own loader and DT_RUNPATH", "host loader and LD_LIBRARY_PATH",
                                  "LD_LIBRARY_PATH before DT_RUNPATH", "DT_RPATH before LD_LIBRARY_PATH",
                                  "$ORIGIN in DT_RPATH", "the loader run as a command with --library-path"])
def test_a_copied_glibc_is_found_as_ld_so_finds_it(finder, glibc_copies, case):
    command, extra, copy = copied_glibc_cases(glibc_copies, waitline())[case]
    env = clean_env(**extra)
    libc = str(copy / "libc.so.6")
    planned = finder.for_command([str(word) for word in command], env, "/")
    assert_library(planned, libc, GLIBC, static=False)
    assert planned.library.file == file_id(libc) != file_id(host_libc())
    with running(command, env) as process:  # what the real ld.so chose
        seen = finder.for_process(process.pid)
        assert_library(seen, libc, GLIBC, static=False)
        assert seen.library == planned.library


def test_static_glibc_program_is_its_own_lock_library(finder):
    program = waitline(("-O0", "-static"))
    with running([program]) as process:
        seen = finder.for_process(process.pid)
        assert_library(seen, str(program), GLIBC, static=True)
    planned = finder.for_command([str(program)], clean_env(), "/")
    assert planned.library == seen.library


def test_stripped_static_program_cannot_be_traced(finder):
    static = waitline(("-O0", "-static"))
    stripped = static.with_name(static.name + "-stripped")
    if not stripped.exists():
        subprocess.run(["strip", "-o", str(stripped), str(static)], check=True)
    with running([stripped]) as process:
        seen = finder.for_process(process.pid)
    assert (seen.library, seen.reason, seen.exe) == (None, REASON_STATIC, str(stripped))
    assert finder.for_command([str(stripped)], clean_env(), "/").reason == REASON_STATIC


# --- musl ------------------------------------------------------------------------


def test_dynamic_musl_program_runs_on_the_musl_loader(finder):
    need("musl-gcc")
    program = waitline(("-O0",), compiler="musl-gcc")
    loader = os.path.realpath(ElfFile.open(str(program)).interpreter or "")
    with running([program]) as process:
        seen = finder.for_process(process.pid)
        assert_library(seen, loader, MUSL, static=False)
    planned = finder.for_command([str(program)], clean_env(), "/")
    assert planned.library == seen.library


def test_static_musl_program(finder):
    need("musl-gcc")
    program = waitline(("-O0", "-static"), compiler="musl-gcc")
    with running([program]) as process:
        seen = finder.for_process(process.pid)
        assert_library(seen, str(program), MUSL, static=True)
    assert finder.for_command([str(program)], clean_env(), "/").library == seen.library


# --- no lock library ------------------------------------------------------------


def test_go_program_without_cgo(finder):
    program = go_program(GO_SOURCE, cgo=False)
    with running([program]) as process:
        seen = finder.for_process(process.pid)
    assert (seen.library, seen.reason, seen.comm) == (None, REASON_GO, comm_of(program))
    assert finder.for_command([str(program)], clean_env(), "/").reason == REASON_GO


def test_go_program_with_cgo_runs_on_glibc(finder):
    program = go_program(CGO_SOURCE, cgo=True)
    with running([program]) as process:
        seen = finder.for_process(process.pid)
        assert_library(seen, host_libc(), GLIBC, static=False)
    assert finder.for_command([str(program)], clean_env(), "/").library == seen.library


def test_a_process_that_exited_or_is_a_zombie(finder):
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert finder.for_process(gone.pid) == ProcessLibrary(gone.pid, "", "", None, REASON_EXITED)
    zombie = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        seen = finder.for_process(zombie.pid)
        assert (seen.library, seen.reason, seen.comm) == (None, REASON_EXITED, "true")
    finally:
        zombie.wait()


# --- scripts and commands that cannot start ----------------------------------


def script(path: Path, text: str, mode: int = 0o755) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_script_runs_on_its_interpreters_libc(finder, tmp_path):
    shell = finder.for_command(["/bin/sh"], clean_env(), "/")
    assert shell.library is not None and shell.library.path == host_libc()
    plain = script(tmp_path / "plain-script-name", "#!/bin/sh\necho hi\n")
    seen = finder.for_command([str(plain)], clean_env(), "/")
    assert (seen.comm, seen.exe, seen.library) == ("plain-script-na", os.path.realpath("/bin/sh"), shell.library)
    # through env and PATH, and a script whose interpreter is another script
    via_env = script(tmp_path / "via-env", "#!/usr/bin/env -S sh -e\necho hi\n")
    script(tmp_path / "nested", f"#!{via_env}\n")
    for name in ("via-env", "nested"):
        seen = finder.for_command([name], clean_env(PATH=f"{tmp_path}:/usr/bin:/bin"), "/")
        assert (seen.comm, seen.library) == (name, shell.library)
        assert seen.exe == os.path.realpath(shutil.which("sh", path="/usr/bin:/bin") or "")


def test_commands_that_cannot_start_raise(finder, tmp_path):
    def failure(argv: Sequence[str], **env: str) -> CommandError:
        with pytest.raises(CommandError) as caught:
            finder.for_command(argv, clean_env(**env), str(tmp_path))
        assert isinstance(caught.value, OSError)
        return caught.value

    missing = failure(["igdeadlock-no-such-command"])
    assert (str(missing), missing.errno) == ("igdeadlock-no-such-command: command not found", errno.ENOENT)
    script(tmp_path / "x", "#!/bin/sh\n", mode=0o644)
    denied = failure(["./x"])
    assert (str(denied), denied.errno) == ("./x: permission denied (not executable)", errno.EACCES)
    assert str(failure(["x"], PATH=str(tmp_path))) == "x: permission denied (not executable)"
    assert str(failure(["./absent"])) == "./absent: no such file or directory"
    script(tmp_path / "bad", "#!/nonexistent/interpreter\n")
    assert str(failure(["./bad"])) == "./bad: bad #! interpreter /nonexistent/interpreter: no such file or directory"
    script(tmp_path / "text", "just text\n")
    assert failure(["./text"]).errno == errno.ENOEXEC


# --- other mount namespaces and deleted files: paths perf_event_open accepts --------


def test_a_process_in_another_mount_namespace_is_probed_through_its_root(finder, glibc_copies):
    need("unshare")
    program = waitline()
    libc = host_libc()
    copy = str(glibc_copies / "a" / "libc.so.6")
    # the copy is mounted over the host's libc in a mount namespace of its own
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$1" "$2" && exec "$3"', "sh", copy, libc, str(program)]
    with running(command) as process:
        seen = finder.for_process(process.pid)
        assert_library(seen, libc, GLIBC, static=False, open_path=f"/proc/{process.pid}/root{libc}")
        assert seen.library.file == file_id(copy) != file_id(libc)
        with uprobe_counter(seen.library, "pthread_mutex_lock", process.pid) as counter:
            lock_lines(process, 3)
            assert counted(counter) == 3


def test_a_deleted_library_is_probed_through_map_files(finder, tmp_path):
    program = waitline()
    copy = tmp_path / "libc.so.6"
    shutil.copy2(host_libc(), copy)
    copy_id = file_id(str(copy))
    with running([program], clean_env(LD_LIBRARY_PATH=str(tmp_path))) as process:
        copy.unlink()
        seen = finder.for_process(process.pid)
        library = seen.library
        assert library is not None and library.path == str(copy) and library.file == copy_id
        assert library.open_path.startswith(f"/proc/{process.pid}/map_files/")
        assert file_id(library.open_path) == copy_id
        with uprobe_counter(library, "pthread_mutex_lock", process.pid) as counter:
            lock_lines(process, 2)
            assert counted(counter) == 2


# --- the pieces -----------------------------------------------------------------


def test_ld_so_cache_parser_agrees_with_ldconfig():
    ldconfig = need("ldconfig")
    with open("/etc/ld.so.cache", "rb") as handle:
        entries = parse_ld_so_cache(handle.read())
    listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True).stdout
    expected = set()
    for line in listing.splitlines():
        name_and_kind, arrow, path = line.strip().partition(" => ")
        if arrow:  # not the count at the top, nor "Cache generated by" at the bottom
            expected.add((name_and_kind.split(" (")[0], path))
    assert {(e.name, e.path) for e in entries} == expected
    assert any(e.name == "libc.so.6" for e in entries)


def test_maps_lines_give_file_identity_and_deleted_files():
    text = ("55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234 /usr/bin/a program\n"
            "7f0000000000-7f0000001000 r-xp 00001000 103:0a 99 /tmp/libc.so.6 (deleted)\n"
            "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n")
    assert parse_maps(text) == [
        MappedRegion("55d0c0a00000-55d0c0a02000", FileId(os.makedev(0xFE, 1), 1234), "/usr/bin/a program", False),
        MappedRegion("7f0000000000-7f0000001000", FileId(os.makedev(0x103, 0xA), 99), "/tmp/libc.so.6", True),
    ]


def test_mapped_elf_file_reads_like_one_read_into_memory():
    libc = host_libc()
    read = ElfFile.open(libc)
    with ElfFile.map(libc) as mapped:
        assert mapped.symbols() == read.symbols()
        assert mapped.stat is not None and FileId.of(mapped.stat) == file_id(libc)
        found = mapped.find_symbols(SYMBOLS)
        assert {n: s.value for n, s in found.items()} == {n: read.find_function(n).value for n in SYMBOLS}
