"""Locks igdeadlock cannot see are named, never passed over: a Rust program
(std's futex-based Mutex, built with cargo) takes no lock that any function
sees, so its report says where its threads waited on futexes outside every
traced lock function, and a process whose every thread hangs in such waits is
reported as all-threads-blocked whatever its language."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import BIN_CACHE, IMAGE, PROGRAMS, program_facts, run_cli, trace_json

HANG = ("--hang-time", "2", "--stop-on-deadlock", "--timeout", "120")
UNTRACED = "futex wait(s) outside every traced lock function"
CODE = "its code has locks igdeadlock does not trace"


@pytest.fixture(scope="module")
def rust_abba() -> Path:
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.path.exists(cargo):
        pytest.fail("cargo is missing: install Rust (https://rustup.rs)")
    target = BIN_CACHE / "cargo"
    subprocess.run([cargo, "build", "--release", "--offline", "--quiet", "--target-dir", str(target)],
                   cwd=PROGRAMS / "rust_abba", check=True)
    return target / "release" / "rust_abba"


@pytest.fixture(scope="module")
def go_abba() -> Path:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.path.exists(go):
        pytest.fail("go is missing: make setup installs it (tools/ig)")
    target = BIN_CACHE / "go_abba"
    subprocess.run([go, "build", "-o", str(target), str(PROGRAMS / "go_abba" / "main.go")],
                   cwd=PROGRAMS / "go_abba", check=True, env={**os.environ, "GOFLAGS": "", "GO111MODULE": "off"})
    return target


def code_limits(report, comm: str) -> list:
    return [limit for p in report["processes"] if p["comm"].startswith(comm) for limit in p["limits"]
            if CODE in limit]


def untraced_limits(report) -> list:
    return [limit for p in report["processes"] if p["comm"].startswith("rust_abba") for limit in p["limits"]
            if UNTRACED in limit]


def test_a_rust_program_gets_a_coverage_note_naming_where_it_waited(ig_daemon, rust_abba):
    report, _ = trace_json(ig_daemon, [rust_abba])
    assert [f for f in report["findings"] if f["kind"] == "potential-deadlock"] == []  # invisible to igdeadlock...
    (note,) = untraced_limits(report)  # ...and the report says so
    assert "Barrier>::wait" in note and "no deadlock among them is ruled out" in note


def test_a_quiet_rust_program_is_never_reported_clean(ig_daemon, rust_abba):
    """Two std::sync::Mutex taken in opposite orders, never contended, no
    thread ever waiting: nothing to see at run time, so the report says from
    the program's code that its locks are not seen."""
    report, stderr = trace_json(ig_daemon, [rust_abba, "quiet"])
    assert set(program_facts(stderr)) >= {"ab", "ba"}
    assert report["findings"] == [] and untraced_limits(report) == []  # nothing waited...
    (limit,) = code_limits(report, "rust_abba")  # ...and still no clean bill
    assert "Rust std's futex-based Mutex/RwLock" in limit and str(rust_abba) in limit
    (process,) = [p for p in report["processes"] if p["comm"].startswith("rust_abba")]
    assert process["traced"] and process["untraced_lock_code"] == [
        {"implementation": "Rust std's futex-based Mutex/RwLock", "file": str(rust_abba)}]
    text = run_cli(["trace", "--image", IMAGE, "--remote", ig_daemon, "--", str(rust_abba), "quiet"])
    assert text.returncode == 0, text.stderr
    assert "LIMIT: pid" in text.stdout and "1 process(es) with limits or not traced" in text.stdout


def test_a_go_program_is_named_with_its_runtimes_locks(ig_daemon, go_abba):
    report, stderr = trace_json(ig_daemon, [go_abba])
    assert "process go_abba" in stderr
    (limit,) = code_limits(report, "go_abba")
    assert "Go's sync.Mutex/RWMutex and runtime locks" in limit


def test_c_programs_have_no_such_limit(ig_daemon, program):
    report, _ = trace_json(ig_daemon, [program("abba")])
    assert [p["untraced_lock_code"] for p in report["processes"]] == [[]] * len(report["processes"])


def test_a_rust_deadlock_is_a_hang_and_its_mutex_is_named(ig_daemon, rust_abba):
    report, stderr = trace_json(ig_daemon, [rust_abba, "deadlock"], *HANG)
    facts = program_facts(stderr)
    (hang,) = [f for f in report["findings"] if f["kind"] == "all-threads-blocked"]
    assert {facts["ab"][0], facts["ba"][0]} <= {b["tid"] for b in hang["blocked"]}
    (note,) = untraced_limits(report)
    assert "std::sys::sync::mutex::futex::Mutex>::lock_contended" in note, note


def test_the_c_librarys_own_waits_are_no_note(ig_daemon, program):
    """pthread_barrier_wait, condition variables and joins wait on futexes in
    the C library: they are no untraced locks."""
    report, _ = trace_json(ig_daemon, [program("abba")])
    assert all(UNTRACED not in limit for p in report["processes"] for limit in p["limits"])
