"""`igdeadlock watch` across several real ig daemons: merged findings, a daemon killed mid-run."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from helpers import IGDEADLOCK, IMAGE, Lines, finding_of, program_facts, require_root_and_ig


class Finished:
    """A program run to its end: its pid and its output."""

    def __init__(self, pid: int, stdout: str) -> None:
        self.pid, self.stdout = pid, stdout


def run_to_end(command) -> Finished:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    return Finished(process.pid, stdout)


@pytest.fixture
def two_daemons(tmp_path):
    require_root_and_ig()
    from igdeadlock.ig.daemon import PrivateDaemon, find_ig

    directories = [tmp_path / f"daemon{i}" for i in (1, 2)]
    for directory in directories:
        directory.mkdir(mode=0o700)
    daemons = [PrivateDaemon(find_ig(), log_path=str(tmp_path / f"daemon{i}.log"), directory=str(d))
               for i, d in zip((1, 2), directories)]
    addresses = [str(d.start()) for d in daemons]
    yield daemons, addresses
    for daemon in daemons:
        daemon.stop()


def test_watch_merges_daemons_and_survives_a_killed_one(two_daemons, program, tmp_path):
    daemons, addresses = two_daemons
    out = tmp_path / "report.json"
    watch = subprocess.Popen(
        [*IGDEADLOCK, "watch", "--image", IMAGE, "--remote", addresses[0], "--remote", addresses[1],
         "--format", "json", "-o", str(out), "--duration", "300", "--status-interval", "0.5",
         "--fetch-interval", "250"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = Lines(watch.stderr)
    churn = None
    try:
        lines.wait_for(lambda line: "2/2 targets connected" in line)
        churn = subprocess.Popen([str(program("churn"))], stdout=subprocess.PIPE, text=True)
        churn_facts = program_facts(churn.stdout.readline() + churn.stdout.readline())
        # both daemons see the churn process (uprobes trace the whole host): two live findings
        lines.wait_count(lambda line: f"(pid={churn.pid}," in line, 2)
        daemons[1].stop()  # killed mid-run
        lines.wait_for(lambda line: "1/2 targets connected" in line)
        ring = run_to_end([str(program("ring")), "3"])
        ring_facts = program_facts(ring.stdout)
        lines.wait_count(finding_of("ring-"), 1)
        # the daemon comes back on the same socket: watch reconnects by itself
        daemons[1].start()
        lines.wait_for(lambda line: "2/2 targets connected" in line)
        abba = run_to_end([str(program("abba"))])
        abba_facts = program_facts(abba.stdout)
        lines.wait_count(finding_of("abba-"), 2)
        watch.send_signal(signal.SIGINT)  # Ctrl-C: the report is still written
        assert watch.wait(60) == 0
    finally:
        if churn is not None:
            churn.kill()
        if watch.poll() is None:
            watch.kill()

    report = json.loads(out.read_text())
    assert report["schema"] == "igdeadlock/report/v3"
    targets = {t["address"]: t for t in report["targets"]}
    assert targets[addresses[0]]["state"] == "stopped"
    assert targets[addresses[1]]["state"] == "stopped" and targets[addresses[1]]["connects"] == 2
    assert report["stats"]["streams_interrupted"] == 1

    churn_locks = {churn_facts["A"][0], churn_facts["B"][0]}
    ring_locks = {ring_facts[f"L{i}"][0] for i in range(3)}
    abba_locks = {abba_facts["A"][0], abba_facts["B"][0]}
    # (watch traces the whole host: findings of other processes that run meanwhile are not ours)
    ours = {churn.pid, ring.pid, abba.pid}
    findings = {f["id"]: f for f in report["findings"]}
    by_locks = {}
    for cluster in report["clusters"]:
        cluster["occurrences"] = [o for o in cluster["occurrences"] if o["pid"] in ours]
        if cluster["occurrences"]:
            finding = findings[cluster["occurrences"][0]["finding"]]
            by_locks[frozenset(int(m, 16) for m in finding["mutexes"])] = cluster
    assert set(by_locks) == {frozenset(churn_locks), frozenset(ring_locks), frozenset(abba_locks)}
    churn_cluster, ring_cluster = by_locks[frozenset(churn_locks)], by_locks[frozenset(ring_locks)]
    # the same cycle from both daemons is one cluster finding with two occurrences
    assert sorted(o["target"] for o in churn_cluster["occurrences"]) == sorted(addresses)
    assert {o["pid"] for o in churn_cluster["occurrences"]} == {churn.pid}
    assert all(o["first_seen"] <= o["last_seen"] for o in churn_cluster["occurrences"])
    # while the second daemon was down only the first one saw the ring; after its return both saw abba
    assert [o["target"] for o in ring_cluster["occurrences"]] == [addresses[0]]
    assert sorted(o["target"] for o in by_locks[frozenset(abba_locks)]["occurrences"]) == sorted(addresses)
    assert {f["kind"] for f in report["findings"] if f["pid"] in ours} == {"potential-deadlock"}


def test_a_host_wide_watch_never_traces_igdeadlock_itself(ig_daemon, program, tmp_path):
    """The companion is a CPython program with locks of its own, and its daemon
    runs on the same host: neither is traced, nor reported, however host-wide
    the watch."""
    from helpers import start_watch
    from igdeadlock.host.attach import socket_peer_pid

    out = tmp_path / "report.json"
    watch, lines = start_watch(ig_daemon, out)
    try:
        finished = run_to_end([str(program("abba"))])
        lines.wait_for(finding_of("abba-"))  # tracing works, host-wide
        watch.send_signal(signal.SIGINT)
        assert watch.wait(120) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
    report = json.loads(out.read_text())
    ours = {watch.pid, socket_peer_pid(ig_daemon.replace("unix://", ""))}
    assert None not in ours
    assert [p for p in report["processes"] if p["pid"] in ours] == []
    assert [f for f in report["findings"] if f["pid"] in ours] == []
    assert any(f["pid"] == finished.pid for f in report["findings"])
