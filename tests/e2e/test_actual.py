"""Actual deadlocks: threads blocked in a lock cycle, reported while they hang."""

from __future__ import annotations

import shutil

import pytest

from helpers import program_facts, trace_json

HANG = ("--timeout", "60", "--stop-on-deadlock")


def actual(report):
    return [f for f in report["findings"] if f["kind"] == "actual-deadlock"]


def traced_hang(daemon, command):
    report, stderr = trace_json(daemon, command, *HANG)
    assert "stopped at the deadlock" in stderr, stderr
    return report, program_facts(stderr)


@pytest.mark.parametrize("mode,size", [("abba", 2), ("ring", 3)])
def test_threads_blocked_in_a_mutex_cycle(ig_daemon, program, mode, size):
    report, facts = traced_hang(ig_daemon, [program("deadlock"), mode])
    (deadlock,) = actual(report)
    locks = {facts[f"L{i}"][0] for i in range(size)}
    threads = {facts[f"t{i}"][0] for i in range(size)}
    assert {int(m, 16) for m in deadlock["mutexes"]} == locks
    assert set(deadlock["threads"]) == threads
    for blocked in deadlock["blocked"]:
        # thread ti holds Li and waits for L(i+1), held by thread t(i+1)
        i = [facts[f"t{k}"][0] for k in range(size)].index(blocked["tid"])
        assert int(blocked["waits_for"], 16) == facts[f"L{(i + 1) % size}"][0]
        assert int(blocked["holds"], 16) == facts[f"L{i}"][0]
        assert blocked["held_by"] == facts[f"t{(i + 1) % size}"][0]
        assert blocked["owner_tid"] == blocked["held_by"]  # glibc agrees
        assert blocked["blocked_for_seconds"] >= 0
        assert blocked["stack"][0]["function"] == "take_two"
    # the lock-order cycle is reported too, and the two point at each other
    (potential,) = [f for f in report["findings"] if f["kind"] == "potential-deadlock"]
    assert {int(m, 16) for m in potential["mutexes"]} == locks
    assert deadlock["related"] == potential["id"] and potential["related"] == deadlock["id"]


def test_rwlock_writers_waiting_for_readers(ig_daemon, program):
    report, facts = traced_hang(ig_daemon, [program("deadlock"), "rwlock"])
    (deadlock,) = actual(report)
    assert {int(m, 16) for m in deadlock["mutexes"]} == {facts["L0"][0], facts["L1"][0]}
    assert {b["mode"] for b in deadlock["blocked"]} == {"write"}
    assert deadlock["lock_kinds"] == ["rwlock", "rwlock"]


def test_contention_that_resolves_is_not_a_deadlock(ig_daemon, program):
    report, stderr = trace_json(ig_daemon, [program("contention")])
    assert "done" in stderr
    assert actual(report) == []


def test_deadlock_in_its_own_mount_namespace(ig_daemon, program):
    unshare = shutil.which("unshare")
    report, facts = traced_hang(ig_daemon, [unshare, "-m", "--", program("deadlock"), "abba"])
    (deadlock,) = actual(report)
    assert deadlock["mntns_id"] == facts["mntns"][0]
    assert set(deadlock["threads"]) == {facts["t0"][0], facts["t1"][0]}


def test_watch_reports_a_hang_in_a_process_that_never_exits(ig_daemon, program, tmp_path):
    import json
    import signal
    import subprocess

    from helpers import IGDEADLOCK, IMAGE, Lines

    out = tmp_path / "report.json"
    watch = subprocess.Popen([*IGDEADLOCK, "watch", "--remote", ig_daemon, "--image", IMAGE, "--format", "json",
                              "-o", str(out), "--status-interval", "0.5", "--fetch-interval", "250"],
                             stderr=subprocess.PIPE, text=True)
    lines = Lines(watch.stderr)
    hung = None
    try:
        lines.wait_for(lambda line: "1/1 targets connected" in line)
        hung = subprocess.Popen([str(program("deadlock")), "abba"], stdout=subprocess.PIPE, text=True)
        # (snapshots report hangs that began before the watch too: this one is looked for)
        lines.wait_for(lambda line: "threads are blocked in a lock cycle right now" in line and
                       f"pid={hung.pid}," in line)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(60) == 0
    finally:
        if hung is not None:
            hung.kill()
        if watch.poll() is None:
            watch.kill()
    report = json.loads(out.read_text())
    (deadlock,) = [f for f in actual(report) if f["pid"] == hung.pid]
    assert len(deadlock["threads"]) == 2
