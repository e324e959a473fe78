"""What diagnosing hangs costs (`make bench`, from bench.py): the servers'
throughput under `watch --hangs-only` against untraced, in alternating runs
(single runs here jump by 20-30%), and how long a blocked-thread snapshot of
a host with many waiting threads takes."""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List

import servers

from helpers import wait_until_stuck
from igdeadlock.analysis.collector import Collector
from igdeadlock.ig.daemon import PrivateDaemon, find_ig
from igdeadlock.ig.service import GadgetService
from igdeadlock.session import DEFAULT_SNAPSHOT_SECONDS, GadgetSession, gadget_params

HERE = Path(__file__).resolve().parent
ALTERNATIONS = 5  # runs of each kind, side by side
WAITERS = 1000  # threads of the snapshot benchmark's program


@contextmanager
def hangs_only(image: str, snapshot_interval: float = DEFAULT_SNAPSHOT_SECONDS) -> Iterator[GadgetSession]:
    """The gadget as `igdeadlock watch --hangs-only` runs it (a private daemon,
    every process of the host, a snapshot every ``snapshot_interval`` seconds)."""
    with PrivateDaemon(find_ig()) as daemon:
        address = daemon.start()
        with GadgetService(address) as service:
            collector = Collector(lock_tracing=False)
            with GadgetSession(service, image, gadget_params(1000, image), collector, hangs_only=True,
                               snapshot_interval=snapshot_interval) as session:
                session.start()
                stop = threading.Event()

                def pump() -> None:  # the stream read and the snapshots taken, as watch does
                    while not stop.is_set():
                        session.pump_events(0.2)

                pumping = threading.Thread(target=pump, daemon=True)
                pumping.start()
                try:
                    yield session
                finally:
                    stop.set()
                    pumping.join()


def median(values: List[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def servers_under_hangs_only(image: str, seconds: int) -> Dict[str, Dict[str, object]]:
    """memcached and MariaDB, untraced and under hangs-only, alternately."""
    results: Dict[str, Dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="igdeadlock-bench-") as workdir:
        for start in (lambda: servers.memcached(seconds), lambda: servers.mariadb(Path(workdir), seconds)):
            with start() as server:
                server.load()  # warm up
                untraced: List[float] = []
                traced: List[float] = []
                snapshots = 0
                for _ in range(ALTERNATIONS):
                    untraced.append(server.load())
                    with hangs_only(image) as session:
                        traced.append(server.load())
                        snapshots += session.collector.waits.snapshots
                results[server.name] = {"workload": server.workload, "untraced": untraced,
                                        "hangs_only": traced, "snapshots": snapshots,
                                        "ratio": median(traced) / median(untraced)}
    return results


def snapshot_cost(image: str, threads: int = WAITERS) -> Dict[str, float]:
    """Seconds one snapshot of the whole host takes (the iterator run from here,
    every waiting thread's stack and lock read from /proc) with ``threads``
    threads waiting in one process: the first, which reads every wait, and the
    next, which finds them unchanged."""
    binary = Path(tempfile.gettempdir()) / "igdeadlock-bench-waiters"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(HERE / "waiters.c")], check=True)
    waiters = subprocess.Popen([str(binary), str(threads)], stdout=subprocess.PIPE, text=True)
    try:
        assert waiters.stdout is not None and waiters.stdout.readline().strip() == "ready"
        wait_until_stuck(waiters.pid, threads + 1)
        with hangs_only(image, snapshot_interval=3600.0) as session:
            timed = []
            for _ in range(3):
                started = time.monotonic()
                session.snapshot_now()
                timed.append(time.monotonic() - started)
            waiting = sum(1 for b in session.collector.waits.blocked.values() if b.pid == waiters.pid)
        return {"threads": threads, "waiting_seen": waiting, "first_s": timed[0], "next_s": median(timed[1:])}
    finally:
        waiters.kill()
        waiters.wait()


def render(results: Dict[str, Dict[str, object]], snapshot: Dict[str, float]) -> str:
    lines = [
        f"Diagnosing hangs only (`watch --hangs-only`: no lock traced, a snapshot every "
        f"{DEFAULT_SNAPSHOT_SECONDS:g} s), {ALTERNATIONS} runs of each, alternating; medians",
        "",
        "| server | load | untraced | hangs-only | hangs-only ÷ untraced | snapshots taken |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['workload']} | {median(r['untraced']):,.0f} | "  # type: ignore[arg-type]
                     f"{median(r['hangs_only']):,.0f} | {r['ratio']:.2f} | {r['snapshots']} |")  # type: ignore
    if snapshot:
        lines += ["", f"A snapshot of this host with {snapshot['threads']:.0f} threads waiting in one process "
                      f"({snapshot['waiting_seen']:.0f} of them seen): {snapshot['first_s']:.2f} s the first time "
                      f"(every wait read), {snapshot['next_s']:.2f} s the next (the same waits)"]
    return "\n".join(lines)
