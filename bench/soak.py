"""`make soak`: igdeadlock watch, left on this host for a long time under load.

For SOAK_MINUTES (default 30), a host-wide `igdeadlock watch` runs against a
private `ig daemon` while memcached serves memcaslap, MariaDB serves sysbench,
tests/programs/forkchurn.c forks processes that start threads (each takes locks, in order)
and tests/programs/churn.c makes one real inversion every 100 ms. A third of the
way in, the daemon is killed with SIGKILL and started again on the same socket.
Every minute it records the companion's RSS and the gadget's map memory; at the
end it checks the report: the churn's inversion found, nothing in the servers
but what is judged, every loss counted, the target lost and then connected.
Figures: build/soak/figures.json, and a Markdown table on stdout (README).
Not part of `make test`; needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from igdeadlock.host import attach
from igdeadlock.ig.daemon import PrivateDaemon, find_ig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import servers  # noqa: E402  (this directory's: real servers under load)
from bench import map_memory  # noqa: E402

from helpers import IGDEADLOCK, IMAGE, Lines, compile_program  # noqa: E402

BUILD = HERE.parent / "build" / "soak"
LOAD_SECONDS = 60  # one memcaslap or sysbench run; they repeat until the end


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def gadget_memory(daemon_pid: int) -> int:
    """Locked kernel memory of the gadget's maps (0 while no gadget runs)."""
    ids = attach.programs_held_by(daemon_pid)
    if not ids:
        return 0
    try:
        return sum(map_memory(sorted(ids)).values())
    except (StopIteration, subprocess.CalledProcessError):
        return 0


def drain(lines: Lines) -> List[str]:
    """What the process said so far (Lines keeps only what was waited for)."""
    while not lines.queue.empty():
        lines.seen.append(lines.queue.get())
    return lines.seen


class Repeating:
    """A load run again and again in a thread until stopped; its results kept."""

    def __init__(self, name: str, run: Callable[[], float]) -> None:
        self.name = name
        self.results: List[float] = []
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(run,), daemon=True)

    def _loop(self, run: Callable[[], float]) -> None:
        while not self._stop.is_set():
            try:
                self.results.append(run())
            except Exception as exc:  # noqa: BLE001  (a load that fails is a figure, not the end)
                self.errors.append(str(exc)[:300])
                self._stop.wait(5)

    def start(self) -> "Repeating":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=LOAD_SECONDS + 150)


def restart_killed(daemon: PrivateDaemon) -> float:
    """SIGKILL the daemon (its whole group) and start it again on the same
    socket; seconds until it answered again."""
    process = daemon.process
    assert process is not None
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    daemon.process = None
    socket = daemon.address.location
    if os.path.exists(socket):
        os.unlink(socket)  # a dead daemon's socket: refused, not answered
    started = time.monotonic()
    daemon.start()
    return time.monotonic() - started


def soak(minutes: float, workdir: Path) -> Dict[str, object]:
    churn = compile_program("churn")
    forks = compile_program("forkchurn")
    BUILD.mkdir(parents=True, exist_ok=True)
    report_path = BUILD / "report.json"
    figures: Dict[str, object] = {"minutes": minutes, "samples": []}
    with PrivateDaemon(find_ig(), log_path=str(BUILD / "daemon.log")) as daemon, \
            servers.memcached(LOAD_SECONDS) as memcached, servers.mariadb(workdir, LOAD_SECONDS) as mariadb:
        address = daemon.start()
        loads = [Repeating(memcached.name, memcached.load).start(), Repeating(mariadb.name, mariadb.load).start()]
        programs = [subprocess.Popen([str(churn)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
                    subprocess.Popen([str(forks)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        churn_facts = Lines(programs[0].stderr)
        watch = subprocess.Popen([*IGDEADLOCK, "watch", "--remote", str(address), "--image", IMAGE,
                                  "--duration", str(int(minutes * 60)), "--status-interval", "60",
                                  "--format", "json", "--output", str(report_path)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = Lines(watch.stderr)
        started = time.monotonic()
        killed_at = started + minutes * 60 / 3
        killed: Optional[float] = None
        samples: List[Dict[str, object]] = figures["samples"]  # type: ignore[assignment]
        try:
            lines.wait_for(lambda line: "targets connected" in line or "tracing" in line, timeout=180)
            while watch.poll() is None:
                now = time.monotonic()
                if killed is None and now >= killed_at:
                    figures["daemon_restart_seconds"] = restart_killed(daemon)
                    killed = now
                    figures["killed_at_minute"] = round((now - started) / 60, 1)
                assert daemon.process is not None
                samples.append({"minute": round((now - started) / 60, 1), "companion_rss_kib": rss_kib(watch.pid),
                                "gadget_map_bytes": gadget_memory(daemon.process.pid),
                                "status": next((s for s in reversed(drain(lines)) if "targets connected" in s), "")
                                .strip()})
                print(f"soak: {samples[-1]}", flush=True)
                try:
                    watch.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for program in programs:
                program.kill()
                program.wait()
            for load in loads:
                load.stop()
            if watch.poll() is None:
                watch.send_signal(signal.SIGINT)
                watch.wait(timeout=120)
        figures["watch_exit"] = watch.returncode
        said = drain(lines)
        (BUILD / "watch.log").write_text("".join(said))
        figures["watch_said"] = [line.strip() for line in said if "targets connected" not in line][-20:]
        figures["connected"] = [line.strip() for line in said if "1/1 targets connected" in line][-1:]
        figures["loads"] = {load.name: {"runs": len(load.results), "median": sorted(load.results)[len(load.results)
                                                                                               // 2]
                                        if load.results else None, "errors": load.errors[:3]} for load in loads}
        figures["churn_mutexes"] = [line.strip() for line in churn_facts.seen if "mutex" in line]
    report = json.loads(report_path.read_text())
    figures["findings"] = sorted({(f["kind"], f["comm"]) for f in report["findings"]})  # type: ignore[misc]
    figures["events_lost"] = {k: v for k, v in report["stats"]["events_lost"].items() if v}
    figures["targets"] = report.get("targets", [])
    figures["stats"] = {k: report["stats"][k] for k in ("targets_lost", "processes_seen", "processes_exited",
                                                         "edges_seen") if k in report["stats"]}
    return figures


def render(figures: Dict[str, object]) -> str:
    samples: List[Dict[str, object]] = figures["samples"]  # type: ignore[assignment]
    rows = ["| minute | companion RSS (MiB) | gadget maps (MiB) |", "|---:|---:|---:|"]
    for sample in samples:
        rows.append(f"| {sample['minute']} | {int(sample['companion_rss_kib']) / 1024:.0f} | "  # type: ignore[call-overload]
                    f"{int(sample['gadget_map_bytes']) / 2**20:.1f} |")  # type: ignore[call-overload]
    return "\n".join(rows) + "\n\n" + json.dumps({k: v for k, v in figures.items() if k != "samples"}, indent=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="igdeadlock-soak-") as workdir:
        figures = soak(args.minutes, Path(workdir))
    (BUILD / "figures.json").write_text(json.dumps(figures, indent=1))
    print(render(figures))
    found = any(kind == "potential-deadlock" and comm.startswith("churn") for kind, comm in figures["findings"])  # type: ignore[attr-defined]
    reconnected = bool(figures["connected"])  # connected at the end, after the restart
    if not found:
        print("soak: FAILED: the churn's inversion was not reported", file=sys.stderr)
    return 0 if found and figures["watch_exit"] == 0 and reconnected else 1


if __name__ == "__main__":
    sys.exit(main())
