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

from helpers import BIN_CACHE, PROGRAMS, program_facts, trace_json

HANG = ("--hang-time", "2", "--stop-on-deadlock", "--timeout", "120")
UNTRACED = "futex wait(s) outside every traced lock function"


@pytest.fixture(scope="module")
def rust_abba() -> Path:
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.path.exists(cargo):
        pytest.fail("cargo is missing: install Rust (https://rustup.rs)")
    target = BIN_CACHE / "cargo"
    subprocess.run([cargo, "build", "--release", "--offline", "--quiet", "--target-dir", str(target)],
                   cwd=PROGRAMS / "rust_abba", check=True)
    return target / "release" / "rust_abba"


def untraced_limits(report) -> list:
    return [limit for p in report["processes"] if p["comm"].startswith("rust_abba") for limit in p["limits"]
            if UNTRACED in limit]


def test_a_rust_program_gets_a_coverage_note_naming_where_it_waited(ig_daemon, rust_abba):
    report, _ = trace_json(ig_daemon, [rust_abba])
    assert [f for f in report["findings"] if f["kind"] == "potential-deadlock"] == []  # invisible to igdeadlock...
    (note,) = untraced_limits(report)  # ...and the report says so
    assert "Barrier>::wait" in note and "no deadlock among them is ruled out" in note


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
