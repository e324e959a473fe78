"""Helpers of the end-to-end tests and benchmarks: compiling the C test programs,
what they print, running the igdeadlock CLI, following a process's output."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
# The gadget's C sources: the entry file (its probes) and the headers of bpf/, one per concern.
GADGET_ENTRY = REPO / "program.bpf.c"
GADGET_HEADERS = sorted((REPO / "bpf").glob("*.h"))


def gadget_source() -> str:
    """All of the gadget's C source, the entry file first."""
    return "\n".join(path.read_text() for path in [GADGET_ENTRY, *GADGET_HEADERS])
PROGRAMS = REPO / "tests" / "programs"
BIN_CACHE = REPO / "tests" / ".bin"
IGDEADLOCK = [sys.executable, "-m", "igdeadlock"]
IMAGE = os.environ.get("IGDEADLOCK_IMAGE", "localhost/igdeadlock:latest")


def compile_program(name: str, flags: Sequence[str] = ("-O0", "-g", "-fno-omit-frame-pointer"),
                    compiler: Optional[str] = None, libs: Sequence[str] = ()) -> Path:
    """Compile tests/programs/NAME.c (or .cc) once per source, flags and compiler
    (gcc or g++ unless given, e.g. musl-gcc), linked with ``libs`` (after the source)."""
    source = next(p for p in (PROGRAMS / f"{name}.c", PROGRAMS / f"{name}.cc") if p.exists())
    # a given compiler joins the digest; the default keeps the digests binaries already cached have
    salt = " ".join(flags) + (f" {compiler}" if compiler else "") + (" " + " ".join(libs) if libs else "")
    compiler = compiler or ("g++" if source.suffix == ".cc" else "gcc")
    digest = hashlib.sha256(source.read_bytes() + salt.encode()).hexdigest()[:12]
    BIN_CACHE.mkdir(exist_ok=True)
    binary = BIN_CACHE / f"{name}-{digest}"
    if not binary.exists():
        tmp = binary.with_suffix(".tmp")
        subprocess.run([compiler, *flags, "-pthread", "-o", str(tmp), str(source), *libs], check=True)
        tmp.rename(binary)
    return binary


def pkg_config(*args: str) -> List[str]:
    """Compiler or linker flags of a library, from pkg-config."""
    return subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout.split()


def program_facts(output: str) -> Dict[str, List[int]]:
    """Lines like "mutex A 0x55.. B 0x55..", "thread ab 1234" and "line second 86" -> {"A": [...],
    "ab": [...], "second": [86]};
    "mntns N" -> {"mntns": [N]}."""
    facts: Dict[str, List[int]] = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "mntns":
            facts.setdefault("mntns", []).append(int(words[1]))
            continue
        if not words or words[0] not in ("mutex", "thread", "pid", "mntns", "line"):
            continue
        for name, value in zip(words[1::2], words[2::2]):
            facts.setdefault(name, []).append(int(value, 0))
    return facts



# Where `ig image build` keeps images (an OCI image layout).
IG_OCI_STORE = Path(os.environ.get("IG_OCI_STORE", "/var/lib/ig/oci-store"))
EBPF_LAYER = "application/vnd.gadget.ebpf.program.v1+binary"
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def gadget_object(image: str = IMAGE, arch: Optional[str] = None, store: Path = IG_OCI_STORE) -> bytes:
    """The BPF object of `image` for `arch` (this machine's by default), read
    from ig's image store: the very object `ig run` loads."""
    arch = arch or GO_ARCH.get(os.uname().machine, os.uname().machine)

    def blob(digest: str) -> bytes:
        algorithm, _, value = digest.partition(":")
        return (store / "blobs" / algorithm / value).read_bytes()

    index = json.loads((store / "index.json").read_text())
    tagged = [m for m in index.get("manifests", [])
              if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == image]
    if not tagged:
        raise LookupError(f"{image} is not in {store}: run `make gadget`")
    manifests = json.loads(blob(tagged[-1]["digest"])).get("manifests", [])
    for manifest in manifests:
        if manifest.get("platform", {}).get("architecture") == arch:
            for layer in json.loads(blob(manifest["digest"]))["layers"]:
                if layer["mediaType"] == EBPF_LAYER:
                    return blob(layer["digest"])
    raise LookupError(f"{image} has no {arch} BPF object")


def require_root_and_ig() -> None:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests trace with eBPF and need root (run `make test` as root)")


def run_cli(args: Sequence[str], timeout: float = 120, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run([*IGDEADLOCK, *args], capture_output=True, text=True, timeout=timeout, env=env)


def trace_json(daemon: Optional[str], command: Sequence[str], *extra: str,
               timeout: float = 120) -> Tuple[dict, str]:
    """`igdeadlock trace --format json` through the daemon; returns (report, stderr)."""
    args = ["trace", "--format", "json", "--image", IMAGE, *extra]
    if daemon is not None:
        args += ["--remote", daemon]
    result = run_cli([*args, "--", *map(str, command)], timeout=timeout)
    assert result.returncode == 0, f"igdeadlock failed ({result.returncode}):\n{result.stderr}"
    report = json.loads(result.stdout)
    assert report["schema"].startswith("igdeadlock/report/")
    return report, result.stderr


def unsuppressed(report: dict) -> List[dict]:
    return [f for f in report["findings"] if f["suppressed"] is None]


class Lines:
    """A process's stderr, line by line, waited on without sleeping blindly."""

    def __init__(self, stream) -> None:
        self.queue: "queue.Queue[str]" = queue.Queue()
        self.seen: list = []
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.queue.put(line)

    def wait_for(self, predicate, timeout: float = 60.0) -> str:
        """Wait for a new line that matches (lines read before this call do not count)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"timed out; saw:\n{''.join(self.seen[-40:])}")

    def text(self, timeout: float = 60.0) -> str:
        """Everything the stream said, once it ended."""
        self._reader.join(timeout)
        while not self.queue.empty():
            self.seen.append(self.queue.get())
        return "".join(self.seen)

    def wait_count(self, predicate, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` lines seen so far match."""
        deadline = time.monotonic() + timeout
        while sum(1 for line in self.seen if predicate(line)) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "".join(self.seen[-40:])
            try:
                self.seen.append(self.queue.get(timeout=min(0.5, remaining)))
            except queue.Empty:
                continue


def start_watch(daemon: str, report: Path, *extra: str) -> Tuple[subprocess.Popen, Lines]:
    """`igdeadlock watch --format json -o REPORT` on one daemon, its status line
    every half second; returns once it is connected: the process and its stderr."""
    watch = subprocess.Popen([*IGDEADLOCK, "watch", "--remote", daemon, "--image", IMAGE, "--duration", "600",
                              "--status-interval", "0.5", "--format", "json", "-o", str(report), *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = Lines(watch.stderr)
    try:
        lines.wait_for(lambda line: "1/1 targets connected" in line)
    except BaseException:
        watch.kill()
        raise
    return watch, lines


def finding_of(comm_prefix: str):
    """Matches the first line of a live finding of a process whose name starts so."""
    return lambda line: "(pid=" in line and f", {comm_prefix}" in line


FUTEX_SYSCALL = {"x86_64": 202, "aarch64": 98}[os.uname().machine]


def thread_switches(pid: int) -> Dict[int, Tuple[int, int]]:
    """Each thread of ``pid``: (the system call it is in, -1 if none; its context
    switches so far). Empty once the process is gone."""
    found = {}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    for tid in tids:
        try:
            call = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0]
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        switches = sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
        found[tid] = (int(call) if call.lstrip("-").isdigit() else -1, switches)
    return found


def wait_until_stuck(pid: int, threads: int, timeout: float = 60.0) -> List[int]:
    """Wait until process ``pid`` has ``threads`` threads, each in a futex wait and
    none run since the look before (its context switches unchanged): it hangs.
    Returns their ids."""
    deadline = time.monotonic() + timeout
    before: Dict[int, Tuple[int, int]] = {}
    while time.monotonic() < deadline:
        now = thread_switches(pid)
        if len(now) == threads and all(call == FUTEX_SYSCALL for call, _ in now.values()) and now == before:
            return sorted(now)
        before = now
        time.sleep(0.2)
    calls = sorted({call for call, _ in before.values()})
    raise AssertionError(f"process {pid} did not hang: {len(before)} threads (of {threads}), in system calls {calls}")
