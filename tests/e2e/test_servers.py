"""A real server under load, watched as a user would: memcached (Debian's) with
its own load generator. Nothing is lost with the default settings, and every
finding it produces is judged here."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading

from helpers import REPO, start_watch


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(port: int, server: subprocess.Popen) -> None:
    """memcached answers "version" once it listens (its startup is the signal)."""
    for _ in range(600):
        assert server.poll() is None, "memcached exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"version\r\n")
                if connection.recv(64).startswith(b"VERSION"):
                    return
        except OSError:
            try:
                server.wait(0.05)  # not listening yet; it must not have died
            except subprocess.TimeoutExpired:
                pass
    raise AssertionError("memcached never answered")


def test_memcached_under_load_loses_nothing_in_watch(ig_daemon, tmp_path):
    assert shutil.which("memcached") and shutil.which("memcaslap"), "run `make setup` (tools/packages.txt)"
    out = tmp_path / "report.json"
    watch, _ = start_watch(ig_daemon, out)
    port = free_port()
    server = None
    try:
        server = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-U", "0",
                                   "-t", "4", "-m", "64"])
        wait_until_serving(port, server)
        load = subprocess.run(["memcaslap", "-s", f"127.0.0.1:{port}", "-T", "4", "-c", "32", "-t", "10s"],
                              capture_output=True, text=True, timeout=120)
        assert load.returncode == 0, load.stderr
        assert "TPS" in load.stdout or "Run time" in load.stdout, load.stdout
        watch.send_signal(signal.SIGINT)
        watch.wait(300)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0
    report = json.loads(out.read_text())
    lost = {k: v for k, v in report["stats"]["events_lost"].items() if v}
    assert lost == {}, lost
    (memcached,) = [p for p in report["processes"] if p["pid"] == server.pid]
    assert memcached["traced"] and memcached["limits"] == []
    assert report["stats"]["edges_seen"] > 0
    # memcached's lock order is consistent: nothing to report about it
    assert [f for f in report["findings"] if f["pid"] == server.pid and f["suppressed"] is None] == []


def test_snapshots_of_loaded_servers_find_no_deadlock(ig_daemon, tmp_path):
    """MariaDB under sysbench and memcached under memcaslap, a blocked-thread
    snapshot every second for a minute: their threads wait on locks all the
    time, and contended waits are no deadlock."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    import servers

    out = tmp_path / "report.json"
    watch, lines = start_watch(ig_daemon, out, "--hangs-only", "--snapshot-interval", "1")
    try:
        with servers.memcached(60) as memcached, servers.mariadb(tmp_path, 60) as mariadb:
            loads = [threading.Thread(target=server.load) for server in (memcached, mariadb)]
            for load in loads:
                load.start()
            for load in loads:
                load.join()
        watch.send_signal(signal.SIGINT)
        assert watch.wait(300) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
    report = json.loads(out.read_text())
    assert report["stats"]["snapshots"] >= 50
    assert report["stats"]["snapshot_waits"] > 0
    deadlocks = [f for f in report["findings"] if f["kind"] == "actual-deadlock"
                 and f["comm"].startswith(("memcached", "mariadbd"))]
    assert deadlocks == []
