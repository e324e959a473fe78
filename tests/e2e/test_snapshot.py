"""Hangs diagnosed now: processes that deadlocked or hung before igdeadlock
started, read from the blocked threads alone (`igdeadlock snapshot`,
`watch --hangs-only`, `trace --pid`), nothing traced before."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from contextlib import contextmanager
from typing import Dict, Iterator, List, Sequence, Tuple

import pytest

from helpers import (
    IGDEADLOCK,
    IMAGE,
    Lines,
    compile_program,
    pkg_config,
    program_facts,
    run_cli,
    wait_until_stuck,
)

DEBIAN_PYTHON = "/usr/bin/python3"  # CPython 3.11, built by Debian
PY_ABBA = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "programs" / "py_abba.py")


@contextmanager
def hung(command: Sequence[str], threads: int) -> Iterator[Tuple[subprocess.Popen, Dict[str, List[int]]]]:
    """A program that hangs for good: started, waited for until all its
    ``threads`` threads are stuck in futex waits; killed afterwards. Yields it
    and the facts it printed."""
    process = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, text=True)
    try:
        wait_until_stuck(process.pid, threads)
        # all it prints comes before it hangs: the lines are there to read
        os.set_blocking(process.stdout.fileno(), False)
        facts = program_facts(process.stdout.read() or "")
        yield process, facts
    finally:
        process.kill()
        process.wait()


def snapshot(daemon: str, *args: str, expect: int = 1) -> Tuple[dict, str]:
    result = run_cli(["snapshot", "--remote", daemon, "--image", IMAGE, "--format", "json", "--exit-code", *args])
    assert result.returncode == expect, f"igdeadlock snapshot exited {result.returncode}:\n{result.stderr}"
    return json.loads(result.stdout), result.stderr


def kinds(report: dict, kind: str) -> List[dict]:
    return [f for f in report["findings"] if f["kind"] == kind]


def check_cycle(deadlock: dict, facts: Dict[str, List[int]], size: int, lock_kind: str) -> None:
    """Thread ti holds Li and waits for L(i+1), which thread t(i+1) holds."""
    threads = [facts[f"t{i}"][0] for i in range(size)]
    locks = [facts[f"L{i}"][0] for i in range(size)]
    assert set(deadlock["threads"]) == set(threads)
    assert {int(m, 16) for m in deadlock["mutexes"]} == set(locks)
    assert deadlock["lock_kinds"] == [lock_kind] * size
    for blocked in deadlock["blocked"]:
        i = threads.index(blocked["tid"])
        assert int(blocked["waits_for"], 16) == locks[(i + 1) % size]
        assert blocked["held_by"] == threads[(i + 1) % size]
        assert blocked["owner_tid"] == threads[(i + 1) % size]  # as the C library recorded it
        assert blocked["blocked_for_seconds"] > 0
        functions = [frame["function"] for frame in blocked["stack"]]
        assert "take_two" in functions, functions
        take_two = blocked["stack"][functions.index("take_two")]
        assert take_two["source"].startswith("deadlock.c:"), take_two


@pytest.mark.parametrize("args,size,lock_kind", [
    (["abba"], 2, "mutex"),
    (["ring"], 3, "mutex"),
    (["rwlock-writers"], 2, "rwlock"),
    (["abba", "pi"], 2, "mutex"),
    (["abba", "errorcheck"], 2, "mutex"),
])
def test_a_deadlock_that_began_before_the_snapshot(ig_daemon, program, args, size, lock_kind):
    with hung([program("deadlock"), *args], size + 1) as (process, facts):
        report, _ = snapshot(ig_daemon, "--pid", str(process.pid))
    (deadlock,) = kinds(report, "actual-deadlock")
    assert deadlock["pid"] == process.pid
    check_cycle(deadlock, facts, size, lock_kind)
    assert kinds(report, "all-threads-blocked") == []  # the cycle explains the hang
    assert any("lock order was not traced" in note for note in report["notes"])


def test_a_static_musl_program_with_error_checking_mutexes(ig_daemon):
    if shutil.which("musl-gcc") is None:
        pytest.fail("musl-gcc is missing: run `make setup`")
    binary = compile_program("deadlock", flags=("-O0", "-g", "-fno-omit-frame-pointer", "-static"),
                             compiler="musl-gcc")
    with hung([binary, "abba", "errorcheck"], 3) as (process, facts):
        report, _ = snapshot(ig_daemon, "--pid", str(process.pid))
    (deadlock,) = kinds(report, "actual-deadlock")
    check_cycle(deadlock, facts, 2, "mutex")


def test_the_text_report_says_who_holds_what_and_for_how_long(ig_daemon, program):
    with hung([program("deadlock"), "abba"], 3) as (process, facts):
        result = run_cli(["snapshot", "--remote", ig_daemon, "--image", IMAGE, "--pid", str(process.pid)])
    assert result.returncode == 0, result.stderr
    t0, t1 = facts["t0"][0], facts["t1"][0]
    assert f"Thread {t0} (deadlock" in result.stdout and "waits for mutex" in result.stdout
    assert f"held by thread {t1}, blocked for" in result.stdout
    assert "deadlock.c:" in result.stdout


@pytest.mark.parametrize("command,family", [
    ([DEBIAN_PYTHON, PY_ABBA, "deadlock"], "semaphore"),
    ("glib", "gmutex"),
])
def test_a_hang_on_locks_that_keep_no_owner(ig_daemon, command, family):
    """CPython's locks are semaphores and GLib's GMutex keeps no owner: no cycle
    can be closed, and nobody is named as the owner; every thread waits."""
    if command == "glib":
        command = [compile_program("glib_abba", flags=("-O0", "-g", "-fno-omit-frame-pointer",
                                                       *pkg_config("--cflags", "glib-2.0")),
                                   libs=pkg_config("--libs", "glib-2.0")), "deadlock"]
    with hung(command, 3) as (process, facts):
        report, _ = snapshot(ig_daemon, "--pid", str(process.pid), "--hang-time", "0.5")
    (hang,) = kinds(report, "all-threads-blocked")
    assert hang["pid"] == process.pid
    waits = {b["tid"]: b for b in hang["blocked"]}
    assert len(waits) == 3
    # the two threads that took the locks wait for them (the main thread joins them)
    tids = [facts[name][0] for name in ("ab", "ba")] if "ab" in facts else [t for t in waits if t != process.pid]
    assert [waits[tid]["wait_kind"] for tid in tids] == [family, family], waits
    assert all(not b["held_by"] and not b["owner_tid"] for b in waits.values())  # owner unknown, never guessed
    assert kinds(report, "actual-deadlock") == []


def test_watch_hangs_only_reports_a_deadlock_that_began_before_it(ig_daemon, program, tmp_path):
    out = tmp_path / "report.json"
    with hung([program("deadlock"), "ring"], 4) as (process, facts):
        watch = subprocess.Popen([*IGDEADLOCK, "watch", "--hangs-only", "--remote", ig_daemon, "--image", IMAGE,
                                  "--snapshot-interval", "0.5", "--status-interval", "0.5", "--format", "json",
                                  "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = Lines(watch.stderr)
        try:
            # (any other process of the host hung now is reported too: this one is looked for)
            lines.wait_for(lambda text: "threads are blocked in a lock cycle right now" in text and
                           f"pid={process.pid}," in text)
            watch.send_signal(signal.SIGINT)
            assert watch.wait(60) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
    report = json.loads(out.read_text())
    (deadlock,) = [f for f in kinds(report, "actual-deadlock") if f["pid"] == process.pid]
    check_cycle(deadlock, facts, 3, "mutex")
    assert report["stats"]["snapshots"] >= 2
    # no lock was traced: no process is said to be traced, or not
    assert report["stats"]["processes_traced"] == 0 and report["stats"]["processes_untraced"] == 0


def test_trace_pid_reports_a_hang_in_progress_at_once(ig_daemon, program):
    with hung([program("deadlock"), "abba"], 3) as (process, facts):
        result = run_cli(["trace", "--remote", ig_daemon, "--image", IMAGE, "--pid", str(process.pid),
                          "--format", "json", "--stop-on-deadlock", "--timeout", "60"])
        assert process.poll() is None  # a process traced by its pid is never stopped by igdeadlock
    assert result.returncode == 0, result.stderr
    assert f"process {process.pid} was left running" in result.stderr
    report = json.loads(result.stdout)
    (deadlock,) = kinds(report, "actual-deadlock")
    check_cycle(deadlock, facts, 2, "mutex")


def test_contention_that_resolves_is_no_deadlock(ig_daemon, program):
    """Threads that wait for each other's locks a moment at a time are in no
    snapshot pair as a cycle: a thread that ran in between waits anew."""
    contention = subprocess.Popen([str(program("contention")), "forever"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(3):
            report, _ = snapshot(ig_daemon, "--pid", str(contention.pid), "--interval", "0.2", expect=0)
            assert kinds(report, "actual-deadlock") == []
    finally:
        contention.kill()
        contention.wait()


def test_bad_input_gets_a_line_each_and_loses_nothing(ig_daemon, program):
    gone = subprocess.Popen(["true"])
    gone.wait()
    with hung([program("deadlock"), "abba"], 3) as (process, facts):
        report, stderr = snapshot(ig_daemon, "--pid", str(gone.pid), "--pid", "2", "--pid", str(process.pid))
    assert f"there is no process {gone.pid}: left out" in stderr
    assert "process 2 is a kernel thread" in stderr
    (deadlock,) = kinds(report, "actual-deadlock")
    assert deadlock["pid"] == process.pid
    result = run_cli(["snapshot", "--remote", ig_daemon, "--image", IMAGE, "--pid", str(gone.pid)])
    assert result.returncode == 2 and "none of the processes given can be looked at" in result.stderr
