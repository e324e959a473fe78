"""Each process is traced on the C library it really uses: the host's glibc, a
copy of glibc, musl, or the executable itself when it is linked statically.
Processes that cannot be traced are listed with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import BIN_CACHE, IMAGE, compile_program, program_facts, run_cli, trace_json

GLIBC_LOADER = "/lib64/ld-linux-x86-64.so.2"
GO = shutil.which("go") or "/usr/local/go/bin/go"


@pytest.fixture(scope="session")
def glibc_copy() -> Path:
    """A private copy of the host's glibc (loader and libc), as a container image has one."""
    directory = BIN_CACHE / "glibc-copy"
    if not (directory / "libc.so.6").exists():
        directory.mkdir(parents=True, exist_ok=True)
        for name, source in (("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
                             ("ld-linux-x86-64.so.2", GLIBC_LOADER)):
            shutil.copy2(os.path.realpath(source), directory / (name + ".tmp"))
            os.rename(directory / (name + ".tmp"), directory / name)
    return directory


def variant(name: str, how: str, glibc_copy: Path) -> Path:
    """tests/programs/NAME.c built the way HOW says."""
    flags = ["-O0", "-g", "-fno-omit-frame-pointer"]
    if how == "copied-glibc":
        return compile_program(name, flags + [f"-Wl,--dynamic-linker={glibc_copy}/ld-linux-x86-64.so.2",
                                              f"-Wl,-rpath,{glibc_copy}"])
    if how == "musl":
        return compile_program(name, flags, compiler="musl-gcc")
    if how == "static-glibc":
        return compile_program(name, flags + ["-static"])
    if how == "static-musl":
        return compile_program(name, flags + ["-static"], compiler="musl-gcc")
    raise ValueError(how)


EXPECTED = {  # how -> (flavor, static, library path or None for the executable itself)
    "copied-glibc": ("glibc", False, "copy"),
    "musl": ("musl", False, "/lib/ld-musl-x86_64.so.1"),
    "static-glibc": ("glibc", True, None),
    "static-musl": ("musl", True, None),
}


def process_of(report: dict, binary: Path) -> dict:
    (entry,) = [p for p in report["processes"] if p["exe"] and os.path.basename(p["exe"]) == binary.name]
    return entry


def check_library(entry: dict, how: str, binary: Path, glibc_copy: Path) -> None:
    flavor, static, path = EXPECTED[how]
    assert entry["traced"] is True and entry["reason"] is None, entry
    assert (entry["flavor"], entry["static"]) == (flavor, static), entry
    if path is None:
        assert entry["library"] == str(binary)
    elif path == "copy":
        assert entry["library"] == str(glibc_copy / "libc.so.6")
    else:
        assert os.path.realpath(entry["library"]) == os.path.realpath(path)


@pytest.mark.parametrize("how", sorted(EXPECTED))
def test_abba_on_every_kind_of_c_library(ig_daemon, glibc_copy, how):
    binary = variant("abba", how, glibc_copy)
    report, stderr = trace_json(ig_daemon, [binary])
    facts = program_facts(stderr)
    (finding,) = report["findings"]
    assert finding["kind"] == "potential-deadlock" and finding["suppressed"] is None
    assert sorted(int(m, 16) for m in finding["mutexes"]) == sorted(facts["A"] + facts["B"])
    assert sorted(finding["threads"]) == sorted(facts["ab"] + facts["ba"])
    check_library(process_of(report, binary), how, binary, glibc_copy)
    assert report["stats"]["processes_untraced"] == 0


@pytest.mark.parametrize("how", sorted(EXPECTED))
def test_write_read_rwlock_inversion_on_every_kind_of_c_library(ig_daemon, glibc_copy, how):
    binary = variant("rwlock", how, glibc_copy)
    report, stderr = trace_json(ig_daemon, [binary, "write-read"])
    facts = program_facts(stderr)
    (finding,) = report["findings"]
    assert (finding["kind"], finding["suppressed"]) == ("potential-deadlock", None)
    assert finding["lock_kinds"] == ["rwlock", "rwlock"]
    assert sorted(int(m, 16) for m in finding["mutexes"]) == sorted(facts["A"] + facts["B"])


@pytest.mark.parametrize("mutex_type,owner_known", [("normal", False), ("errorcheck", True)])
def test_actual_deadlock_on_musl_reads_owners_where_musl_keeps_them(ig_daemon, glibc_copy, mutex_type,
                                                                    owner_known):
    binary = variant("deadlock", "musl", glibc_copy)
    report, stderr = trace_json(ig_daemon, [binary, "abba", mutex_type], "--timeout", "60", "--stop-on-deadlock")
    assert "stopped at the deadlock" in stderr, stderr
    facts = program_facts(stderr)
    (deadlock,) = [f for f in report["findings"] if f["kind"] == "actual-deadlock"]
    assert set(deadlock["threads"]) == {facts["t0"][0], facts["t1"][0]}
    for blocked in deadlock["blocked"]:
        # musl keeps the owner's tid in error-checking mutexes only; never a wrong one
        assert blocked["owner_tid"] == (blocked["held_by"] if owner_known else None), blocked


def test_a_program_started_by_a_shell_is_traced_on_its_own_library(ig_daemon, glibc_copy):
    binary = variant("abba", "musl", glibc_copy)
    report, stderr = trace_json(ig_daemon, ["/bin/sh", "-c", f"{binary}; true"])
    (finding,) = report["findings"]
    assert finding["kind"] == "potential-deadlock"
    check_library(process_of(report, binary), "musl", binary, glibc_copy)
    shells = [p for p in report["processes"] if p["exe"] == "/bin/sh" or p["comm"] == "sh"]
    assert shells and all(p["traced"] and p["flavor"] == "glibc" for p in shells), report["processes"]


@pytest.fixture(scope="session")
def go_program() -> Path:
    """A Go program without libc (CGO_ENABLED=0): nothing to probe."""
    binary = BIN_CACHE / "gosleep"
    if not binary.exists():
        source = BIN_CACHE / "gosleep-src"
        source.mkdir(parents=True, exist_ok=True)
        (source / "main.go").write_text('package main\n\nimport "time"\n\nfunc main() { time.Sleep(time.Second) }\n')
        (source / "go.mod").write_text("module gosleep\n\ngo 1.21\n")
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false", GOCACHE=str(BIN_CACHE / "gocache"))
        subprocess.run([GO, "build", "-o", str(binary) + ".tmp", "."], cwd=source, env=env, check=True)
        os.rename(str(binary) + ".tmp", binary)
    return binary


def test_a_go_program_is_listed_as_not_traced_with_the_reason(ig_daemon, go_program):
    report, _ = trace_json(ig_daemon, [go_program])
    entry = process_of(report, go_program)
    assert entry["traced"] is False
    assert entry["library"] is None
    assert entry["reason"] == "no pthread lock functions (Go runtime)"
    assert report["stats"]["processes_untraced"] == 1
    assert report["schema"] == "igdeadlock/report/v3"
    text = run_cli(["trace", "--remote", ig_daemon, "--image", IMAGE, "--", str(go_program)])
    assert text.returncode == 0, text.stderr
    lines = [line for line in text.stdout.splitlines() if "NOT TRACED" in line]
    assert len(lines) == 1 and "no pthread lock functions (Go runtime)" in lines[0], text.stdout


def test_bystanders_produce_no_records(ig_daemon, program):
    """A lock-heavy process outside COMMAND's tree: the gadget records nothing of it."""
    bystander = subprocess.Popen([str(program("churn"))], stdout=subprocess.DEVNULL)
    try:
        report, _ = trace_json(ig_daemon, ["sleep", "1"])
    finally:
        bystander.kill()
        bystander.wait()
    assert report["stats"]["edges_seen"] == 0
    assert [p["comm"] for p in report["processes"]] == ["sleep"], report["processes"]
