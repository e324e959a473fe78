"""`make bench`: what tracing costs a lock-heavy program, and how fast the companion is.

For each workload of bench/lockbench.c (threads x nesting depth x iterations,
uncontended or contended) it runs the program
  (a) untraced,
  (b) with empty BPF programs on pthread_mutex_lock/unlock (the floor), and
  (c) under the igdeadlock gadget (steady state: its edges are known),
each after one warm-up run, and reads (median of three runs) the BPF run time of the lock and
unlock programs from the kernel's
bpf statistics (kernel.bpf_stats_enabled). Then it loads real servers (bench/servers.py:
memcached, MariaDB) untraced, under empty programs on every function the gadget
probes plus pthread_mutex_unlock (the two-probe floor every peer pays) and under
igdeadlock, and untraced against `watch --hangs-only` (bench/hangs.py, with the
time a snapshot of 1,000 waiting threads takes); times `igdeadlock trace` from
start to the command and from the command's end to the report; and runs
bench/analysis.py.
Prints Markdown tables; needs root.
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
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from igdeadlock import DEFAULT_IMAGE
from igdeadlock.analysis.collector import Collector
from igdeadlock.host import attach
from igdeadlock.host.bpf import Bpf
from igdeadlock.host.locklib import LockLibraryFinder
from igdeadlock.ig.daemon import PrivateDaemon, find_ig
from igdeadlock.ig.service import GadgetService
from igdeadlock.session import GadgetSession, gadget_params

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import hangs  # noqa: E402  (this directory's: what diagnosing hangs costs)
import servers  # noqa: E402  (this directory's: real servers under load)

from helpers import IGDEADLOCK, Lines  # noqa: E402  (the tests' helpers: running igdeadlock, following its output)

BUILD = HERE.parent / "build" / "bench"
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
LOCK_PROGRAMS = {"lock": "trace_uprobe_mutex_lock", "unlock": "trace_uprobe_mutex_unlock"}
FLOOR_PROGRAMS = {"lock": "bench_empty_lock", "unlock": "bench_empty_unlock"}
PIN_DIR = Path("/sys/fs/bpf/igdeadlock-bench")


@dataclass
class Workload:
    name: str
    threads: int
    depth: int
    iterations: int
    mode: str

    def argv(self, binary: Path) -> List[str]:
        return [str(binary), str(self.threads), str(self.depth), str(self.iterations), self.mode]


@dataclass
class Measurement:
    wall_ns_per_pair: float
    bpf_ns_per_pair: Optional[float] = None
    hits_per_pair: Optional[float] = None


def build(arch_define: str, include_arch: str) -> Tuple[Path, Path]:
    BUILD.mkdir(parents=True, exist_ok=True)
    binary = BUILD / "lockbench"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(HERE / "lockbench.c")], check=True)
    empty = BUILD / "empty.bpf.o"
    subprocess.run(["clang", "-target", "bpf", "-O2", "-g", f"-D__TARGET_ARCH_{arch_define}",
                    f"-I/usr/include/gadget/{include_arch}", "-c", str(HERE / "empty.bpf.c"), "-o", str(empty)],
                   check=True)
    return binary, empty


def run_workload(binary: Path, workload: Workload) -> float:
    out = subprocess.run(workload.argv(binary), capture_output=True, text=True, check=True).stdout.split()
    return float(out[out.index("ns_per_pair") + 1])


@contextmanager
def bpf_stats() -> Iterator[None]:
    previous = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(previous)


def measure(binary: Path, workload: Workload, programs: Dict[str, int], runs: int = 3) -> Measurement:
    """The run with the median BPF time per pair of ``runs`` runs (a noisy VM
    makes single runs jump)."""
    results = sorted((measure_once(binary, workload, programs) for _ in range(runs)),
                     key=lambda m: m.bpf_ns_per_pair or 0.0)
    return results[len(results) // 2]


def measure_once(binary: Path, workload: Workload, programs: Dict[str, int]) -> Measurement:
    """Run the workload; BPF time per lock/unlock pair from the programs' statistics."""
    bpf = Bpf()

    def snapshot() -> Dict[str, Tuple[int, int]]:
        infos = {role: bpf.program(prog_id) for role, prog_id in programs.items()}
        return {role: (info.run_time_ns, info.run_count) for role, info in infos.items() if info is not None}

    before = snapshot()
    wall = run_workload(binary, workload)
    after = snapshot()
    pairs = workload.threads * workload.depth * workload.iterations
    per_call = {}
    hits = 0
    for role in ("lock", "unlock"):
        time_ns = after[role][0] - before[role][0]
        count = after[role][1] - before[role][1]
        per_call[role] = time_ns / count if count else 0.0
        hits += count
    return Measurement(wall, per_call["lock"] + per_call["unlock"], hits / pairs)


@contextmanager
def empty_programs(empty: Path, points: List[attach.ProbePoint]) -> Iterator[Dict[str, int]]:
    """The empty programs, loaded with bpftool and attached at ``points`` (which
    name them) on the host's glibc, for every process, as the gadget's are."""
    subprocess.run(["rm", "-rf", str(PIN_DIR)], check=True)
    before = attach.program_ids()
    subprocess.run(["bpftool", "prog", "loadall", str(empty), str(PIN_DIR)], check=True)
    try:
        # the empty programs share no map, so find them by name alone
        loaded = [p for p in Bpf().programs() if p.id not in before]
        ids = {p.name: p.id for p in sorted(loaded, key=lambda p: p.id) if p.name in FLOOR_PROGRAMS.values()}
        # the host's glibc: the one this process runs on
        host_libc = LockLibraryFinder(p.symbol for p in points).for_process(os.getpid()).library
        assert host_libc is not None
        with attach.ProbeSet(points, ids) as probes:
            probes.attach(host_libc)
            yield ids
    finally:
        subprocess.run(["rm", "-rf", str(PIN_DIR)], check=True)


@contextmanager
def floor_programs(empty: Path) -> Iterator[Dict[str, int]]:
    """Empty programs on pthread_mutex_lock and pthread_mutex_unlock: a lock/unlock pair's floor."""
    points = [attach.ProbePoint(FLOOR_PROGRAMS["lock"], "libc", "pthread_mutex_lock", False),
              attach.ProbePoint(FLOOR_PROGRAMS["unlock"], "libc", "pthread_mutex_unlock", False)]
    with empty_programs(empty, points) as ids:
        yield {role: ids[name] for role, name in FLOOR_PROGRAMS.items()}


def two_probe_points(image: str) -> List[attach.ProbePoint]:
    """Every function the gadget probes, unlocks included (what every peer probes:
    two probe hits per lock/unlock pair), each with an empty program."""
    with PrivateDaemon(find_ig()) as daemon:
        with GadgetService(daemon.start()) as service:
            info = service.gadget_info(image, gadget_params(1000, image), extra_info=True)
    listing = info.extraInfo.data["ebpf.programs"].content
    return [replace(p, program=FLOOR_PROGRAMS["lock"], flavors=None)
            for p in attach.probe_points(listing, unlock_checks=True)]


def map_memory(program_ids: List[int]) -> Dict[str, int]:
    """Locked kernel memory of every map of the gadget run these programs belong to
    (all programs sharing maps with them), by map name (bpftool)."""
    programs = Bpf().programs()
    group = next(g for g in attach._share_maps(programs) if any(p.id in program_ids for p in g))
    map_ids = {map_id for p in group for map_id in p.map_ids}
    listing = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True,
                                        check=True).stdout)
    return {m.get("name", str(m["id"])): m.get("bytes_memlock", 0) for m in listing if m["id"] in map_ids}


@contextmanager
def gadget(image: str) -> Iterator[Tuple[Dict[str, int], bytes, Dict[str, int]]]:
    """The igdeadlock gadget running in a private daemon; yields its program ids and GadgetInfo."""
    with PrivateDaemon(find_ig()) as daemon:
        address = daemon.start()
        with GadgetService(address) as service:
            params = gadget_params(1000, image)
            info = service.gadget_info(image, params)
            before = attach.program_ids()
            with GadgetSession(service, image, params, Collector(keep_session=lambda session_id: False)) as session:
                # (watch-like: the gadget's probes go on every library of the host, for every process)
                session.start()
                ids = session.program_ids or attach.find_programs(LOCK_PROGRAMS.values(), before, timeout=30)
                stop = {"flag": False}
                # keep the event stream drained while the workloads run

                def drain() -> None:
                    while not stop["flag"]:
                        session.pump_events(0.2)

                drainer = threading.Thread(target=drain, daemon=True)
                drainer.start()
                memory = map_memory(list(ids.values()) + list(session.program_ids.values()))
                try:
                    yield {role: ids[name] for role, name in LOCK_PROGRAMS.items()}, info.SerializeToString(), memory
                finally:
                    stop["flag"] = True
                    drainer.join()


def sibling_program(program_id: int, name_prefix: str) -> int:
    """The program of the same gadget run (sharing maps with ``program_id``) whose
    name starts so (the kernel keeps 15 characters of a name)."""
    programs = Bpf().programs()
    group = next(g for g in attach._share_maps(programs) if any(p.id == program_id for p in g))
    return next(p.id for p in group if p.name.startswith(name_prefix[:15]))


def exit_cost(exit_program: int, exec_program: int, processes: int = 3000,
              threads: int = 5000) -> Dict[str, float]:
    """BPF time per task exit while the gadget runs (sched_process_exit): short
    processes (/bin/true) and threads created and joined; and per exec."""
    bpf = Bpf()

    def timed(work: Callable[[], None], program: int = exit_program) -> float:
        before = bpf.program(program)
        work()
        after = bpf.program(program)
        assert before is not None and after is not None
        count = after.run_count - before.run_count
        return (after.run_time_ns - before.run_time_ns) / count / 1000 if count else 0.0

    def spawn() -> None:
        for _ in range(processes):
            subprocess.run(["/bin/true"], check=True)

    def create_and_join() -> None:
        for _ in range(threads):
            thread = threading.Thread(target=lambda: None)
            thread.start()
            thread.join()

    return {"process_exit_us": timed(spawn), "thread_exit_us": timed(create_and_join),
            "exec_us": timed(spawn, exec_program)}


def real_servers(image: str, empty: Path, seconds: int) -> Dict[str, Dict[str, object]]:
    """memcached and MariaDB under load: untraced, with empty programs on every
    function the gadget probes plus pthread_mutex_unlock (the two-probe floor),
    and under igdeadlock (watch-like: every process of the host)."""
    points = two_probe_points(image)
    results: Dict[str, Dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="igdeadlock-bench-") as workdir:
        for start in (lambda: servers.memcached(seconds), lambda: servers.mariadb(Path(workdir), seconds)):
            with start() as server:
                server.load()  # warm up: caches, connections, the server's own
                row: Dict[str, object] = {"workload": server.workload, "untraced": server.load()}
                with empty_programs(empty, points):
                    row["floor"] = server.load()
                with gadget(image):
                    row["igdeadlock"] = server.load()
                results[server.name] = row
    return results


def start_and_stop(image: str, runs: int = 3) -> Dict[str, float]:
    """`igdeadlock trace -- date +%s.%N`: seconds from the start of igdeadlock to
    the command's first output, and from there to igdeadlock's exit (the report
    written), with a daemon already running and with a private one (medians)."""

    def once(extra: List[str]) -> Tuple[float, float]:
        with tempfile.NamedTemporaryFile(suffix=".json") as report:
            started = time.time()
            out = subprocess.run([*IGDEADLOCK, "trace", "--image", image, "--format", "json", "-o", report.name,
                                  *extra, "--", "date", "+%s.%N"], capture_output=True, text=True, timeout=120)
            ended = time.time()
        if out.returncode != 0:
            raise RuntimeError(f"igdeadlock trace failed: {out.stderr[-2000:]}")
        ran = float(out.stdout.split()[-1])
        return ran - started, ended - ran

    def median(values: List[float]) -> float:
        return sorted(values)[len(values) // 2]

    with PrivateDaemon(find_ig()) as daemon:
        address = str(daemon.start())
        running = [once(["--remote", address]) for _ in range(runs)]
    private = [once([]) for _ in range(runs)]
    return {"running_start_s": median([r[0] for r in running]), "running_stop_s": median([r[1] for r in running]),
            "private_start_s": median([p[0] for p in private]), "private_stop_s": median([p[1] for p in private])}


UNTRACED_NS_PER_PAIR_MAX = 1000  # lockbench without any probe: tens of ns per pair


def bystander(binary: Path, workload: Workload, image: str) -> Dict[str, float]:
    """A lock loop outside a traced command's tree, alone and while `igdeadlock trace
    -- sleep` runs: probes placed per process leave it alone (wall ns per pair)."""
    # the probes of the stages before are retired in the background: alone means
    # no probe hit (a hit costs microseconds here), within a minute
    deadline = time.monotonic() + 60
    alone = run_workload(binary, workload)
    while alone > UNTRACED_NS_PER_PAIR_MAX and time.monotonic() < deadline:
        alone = run_workload(binary, workload)
    alone = run_workload(binary, workload)  # measured once they are gone (the run above may overlap)
    trace = subprocess.Popen([*IGDEADLOCK, "trace", "--image", image, "--", "sleep", "600"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # tracing is live once igdeadlock has placed its probes
        Lines(trace.stderr).wait_for(lambda line: "attaches them itself" in line, timeout=120)
        run_workload(binary, workload)
        beside = run_workload(binary, workload)
    finally:
        trace.send_signal(signal.SIGINT)
        trace.wait(60)
    return {"alone": alone, "beside_trace": beside}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--server-seconds", type=int, default=10, help="length of each server load run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("make bench needs root (eBPF)", file=sys.stderr)
        return 2
    machine = os.uname().machine
    arch = ("x86", "amd64") if machine == "x86_64" else ("arm64", "arm64")
    binary, empty = build(*arch)
    workloads = [
        Workload("uncontended, 1 thread, depth 2", 1, 2, args.iterations, "uncontended"),
        Workload("uncontended, 1 thread, depth 8", 1, 8, args.iterations // 4, "uncontended"),
        Workload("uncontended, 2 threads, depth 4", 2, 4, args.iterations // 2, "uncontended"),
        Workload("contended, 2 threads, depth 2", 2, 2, args.iterations // 2, "contended"),
    ]
    results: Dict[str, Dict[str, object]] = {w.name: {} for w in workloads}
    for w in workloads:
        run_workload(binary, w)  # warm up
        results[w.name]["untraced"] = Measurement(run_workload(binary, w)).__dict__
    with bpf_stats():
        with floor_programs(empty) as programs:
            for w in workloads:
                run_workload(binary, w)  # the same warm-up as under the gadget
                results[w.name]["floor"] = measure(binary, w, programs).__dict__
        with gadget(args.image) as (programs, info, memory):
            for w in workloads:
                run_workload(binary, w)  # learn the edges, and let the daemon settle: steady state
                results[w.name]["igdeadlock"] = measure(binary, w, programs).__dict__
            exits = exit_cost(sibling_program(programs["lock"], "trace_sched_process_exit"),
                              sibling_program(programs["lock"], "trace_process_exec"))
    results_bystander = bystander(binary, workloads[0], args.image)
    # each of these says why it could not run, and the others still do
    results_servers: Dict[str, Dict[str, object]] = {}
    try:
        with bpf_stats():
            results_servers = real_servers(args.image, empty, args.server_seconds)
    except (servers.ServerError, OSError, subprocess.SubprocessError) as exc:
        print(f"real servers: not measured: {exc}", file=sys.stderr)
    results_hangs: Dict[str, Dict[str, object]] = {}
    snapshot: Dict[str, float] = {}
    try:
        snapshot = hangs.snapshot_cost(args.image)
        results_hangs = hangs.servers_under_hangs_only(args.image, args.server_seconds)
    except (servers.ServerError, OSError, subprocess.SubprocessError) as exc:
        print(f"hangs only: not measured: {exc}", file=sys.stderr)
    timing: Dict[str, float] = {}
    try:
        timing = start_and_stop(args.image)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"start and stop: not measured: {exc}", file=sys.stderr)
    info_path = BUILD / "gadgetinfo.pb"
    info_path.write_bytes(info)
    analysis = json.loads(subprocess.run([sys.executable, str(HERE / "analysis.py"), str(info_path)],
                                         capture_output=True, text=True, check=True, cwd=HERE).stdout)
    print(render(results, analysis, args.iterations, memory))
    print(f"\nBPF time per task exit (sched_process_exit) while the gadget runs: "
          f"{exits['process_exit_us']:.2f} us per process (/bin/true), {exits['thread_exit_us']:.2f} us per thread; "
          f"per exec (sched_process_exec) {exits['exec_us']:.2f} us")
    if results_servers:
        print("\n" + render_servers(results_servers))
    if results_hangs or snapshot:
        print("\n" + hangs.render(results_hangs, snapshot))
    if timing:
        print(f"\n`igdeadlock trace -- date` (median of 3): with a running daemon {timing['running_start_s']:.2f} s "
              f"to the command's start, {timing['running_stop_s']:.2f} s from its end to the report; with a "
              f"private daemon {timing['private_start_s']:.2f} s and {timing['private_stop_s']:.2f} s")
    print(f"\nA bystander ({workloads[0].name}, outside the traced tree): "
          f"{results_bystander['alone']:.0f} ns per pair alone, {results_bystander['beside_trace']:.0f} ns "
          f"while `igdeadlock trace -- sleep 600` runs")
    if args.json:
        Path(args.json).write_text(json.dumps({"workloads": results, "analysis": analysis, "maps": memory,
                                               "bystander": results_bystander, "exits": exits,
                                               "servers": results_servers, "start_stop": timing,
                                               "hangs_only": results_hangs, "snapshot": snapshot}, indent=2))
    return 0


def render_servers(results: Dict[str, Dict[str, object]]) -> str:
    lines = [
        "Real servers (throughput the load generator reports; floor: empty programs on every function the "
        "gadget probes, and on pthread_mutex_unlock)",
        "",
        "| server | load | untraced | two-probe floor | igdeadlock | igdeadlock ÷ untraced | igdeadlock ÷ floor |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        untraced, floor, ours = float(r["untraced"]), float(r["floor"]), float(r["igdeadlock"])  # type: ignore
        lines.append(f"| {name} | {r['workload']} | {untraced:,.0f} | {floor:,.0f} | {ours:,.0f} | "
                     f"{ours / untraced:.2f} | {ours / floor:.2f} |")
    return "\n".join(lines)


def render(results: Dict[str, Dict[str, Dict[str, float]]], analysis: Dict[str, Dict[str, float]],
           iterations: int, memory: Dict[str, int]) -> str:
    lines = [
        f"Lock/unlock pairs: ns per pair ({iterations} iterations; BPF time from kernel.bpf_stats_enabled; "
        f"the median of 3 runs)",
        "",
        "| workload | untraced wall | floor wall | floor BPF | igdeadlock wall | igdeadlock BPF | BPF / floor "
        "| probe hits per pair |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        floor, ours = r["floor"], r["igdeadlock"]
        ratio = ours["bpf_ns_per_pair"] / floor["bpf_ns_per_pair"] if floor["bpf_ns_per_pair"] else float("nan")
        lines.append(f"| {name} | {r['untraced']['wall_ns_per_pair']:.0f} | {floor['wall_ns_per_pair']:.0f} | "
                     f"{floor['bpf_ns_per_pair']:.0f} | {ours['wall_ns_per_pair']:.0f} | "
                     f"{ours['bpf_ns_per_pair']:.0f} | {ratio:.2f} | {ours['hits_per_pair']:.2f} |")
    ingest, adversarial, million = analysis["ingest"], analysis["adversarial"], analysis["million"]
    kubernetes = analysis["ingest_kubernetes"]
    many = analysis["many_processes"]
    lines += [
        "",
        "| analysis | result |",
        "|---|---|",
        f"| decode + ingest, synthetic edge records in IG's wire format | "
        f"{ingest['records_per_second']:,.0f} records/s ({ingest['records']:,} records) |",
        f"| the same from 20 processes in Kubernetes pods (enrichment strings of different lengths) | "
        f"{kubernetes['records_per_second']:,.0f} records/s |",
        f"| complete graph, {adversarial['locks']} locks, {adversarial['edges']} edges (≈3.5e12 simple cycles) | "
        f"{adversarial['witness_cycles']} witness cycles in {adversarial['seconds'] * 1000:.1f} ms |",
        f"| {many['edges']:,} edges in {many['processes']:,} processes, analysed to the end | ingest "
        f"{many['ingest_seconds']:.2f} s, analysis {many['analysis_seconds']:.2f} s "
        f"({many['findings']} findings), peak RSS {many['peak_rss_mib']:.0f} MiB |",
        f"| memory the companion keeps per distinct edge ({analysis['memory']['edges']:,} edges, tracemalloc) | "
        f"{analysis['memory']['bytes_per_edge']:.0f} bytes as ingested, "
        f"{analysis['memory']['bytes_per_edge_decoded']:.0f} once every edge's evidence is decoded |",
        f"| {million['edges']:,} random edges, one process (one giant component) | ingest "
        f"{million['ingest_seconds']:.2f} s, first analysis {million['analysis_seconds']:.2f} s (step budget; "
        f"{million['edges_left_for_next_analysis']:,} edges left for later ones), peak RSS "
        f"{million['peak_rss_mib']:.0f} MiB |",
        "",
        f"Kernel memory of the gadget's maps: {sum(memory.values()) / 2**20:.1f} MiB "
        f"(bpftool bytes_memlock; {len(memory)} maps)",
        "",
        "| map | MiB |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {size / 2**20:.2f} |" for name, size in sorted(memory.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
