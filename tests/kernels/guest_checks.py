"""What the gadget does on the kernel it runs on: measured inside a kernel-matrix
guest (tools/kernels/kvm.py), judged by tests/kernels/test_kernels.py.

    guest_checks.py --expect trace|refuse --object GADGET.o --verifier-stats BIN
                    --abba BIN [--churn BIN] [--containers] --out results.json

Measures, and writes as JSON:
  - the kernel: release, kprobes, BTF, what igdeadlock finds missing;
  - the verifier's figures for the image's object (tools/verifier), per way
    of running the gadget;
  - `igdeadlock trace` of an AB/BA program with each way of attaching the
    uprobes (auto, ig, client), or the refusal on a kernel that cannot run it;
  - with --containers: `igdeadlock watch --container` of an inversion in a
    Docker container, with auto and with ig attaching.
Nothing is judged here: a step that fails is recorded as it failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from test_verifier import CONFIGURATIONS  # noqa: E402

from helpers import IGDEADLOCK, IMAGE  # noqa: E402
from igdeadlock.host import kernel  # noqa: E402

TRACE_TIMEOUT = 600  # seconds: an emulated CPU is slow
WATCH_SECONDS = 90  # the gadget takes tens of seconds to start on an emulated CPU
TRACE_SECONDS = 60
# The ways of running the gadget measured in a guest: these two load the most
# code (tests/e2e/test_verifier.py measures every one on this machine).
GUEST_CONFIGURATIONS = {name: CONFIGURATIONS[name] for name in ("watch", "trace")}


def tail(text: str, lines: int = 12) -> List[str]:
    return text.splitlines()[-lines:]


def verifier_figures(stats: str, obj: str) -> Dict[str, dict]:
    figures = {}
    for name, settings in GUEST_CONFIGURATIONS.items():
        args = [stats, *[a for s in settings for a in ("-set", s)], obj]
        started = time.monotonic()
        run = subprocess.run(args, capture_output=True, text=True, timeout=TRACE_TIMEOUT)
        if run.returncode not in (0, 1):
            figures[name] = {"loaded": False, "errors": tail(run.stderr, 4)}
            continue
        programs = json.loads(run.stdout)["programs"]
        figures[name] = {
            "loaded": all(p["loaded"] for p in programs),
            "programs": len(programs),
            "errors": sorted({p["error"] for p in programs if not p["loaded"]})[:3],
            "max_stack": max(p["combined_stack"] for p in programs),
            "max_stack_with_callbacks": max(p["stack_with_callbacks"] for p in programs),
            "max_insns": max(p["insns_processed"] for p in programs),
            "max_insns_program": max(programs, key=lambda p: p["insns_processed"])["name"],
            "insns_limit": min(p["insns_limit"] for p in programs),
            "verify_ms": round(sum(p["verification_usec"] for p in programs) / 1000, 1),
            "seconds": round(time.monotonic() - started, 1),
        }
    return figures


def report_summary(stdout: str) -> dict:
    try:
        report = json.loads(stdout)
    except ValueError:
        return {"report": None}
    findings = [f for f in report.get("findings", []) if f.get("suppressed") is None]
    first_frames = [e["to_stack"][0] for f in findings for e in f.get("edges", []) if e.get("to_stack")]
    return {
        "report": report.get("schema"),
        "kinds": sorted(f["kind"] for f in findings),
        "lock_kinds": sorted({k for f in findings for k in f.get("lock_kinds", [])}),
        "top_frames": sorted({f"{fr.get('function')}@{os.path.basename(fr.get('file') or '')}:{fr.get('line')}"
                              for fr in first_frames}),
        "containers": sorted({f.get("container") or "" for f in findings}),
        "processes": [{k: p.get(k) for k in ("comm", "traced", "flavor", "library", "reason")}
                      for p in report.get("processes", [])],
        "stats": {k: v for k, v in report.get("stats", {}).items() if isinstance(v, int)},
    }


def igdeadlock(args: List[str]) -> dict:
    started = time.monotonic()
    run = subprocess.run([*IGDEADLOCK, *args], capture_output=True, text=True, timeout=TRACE_TIMEOUT)
    return {"returncode": run.returncode, "seconds": round(time.monotonic() - started, 1),
            "stderr": tail(run.stderr), **report_summary(run.stdout)}


def trace_runs(abba: str, expect: str, churn: Optional[str]) -> List[dict]:
    """AB/BA with each way of attaching. Where ig alone attaches, nothing stops a
    new process until its probes are placed, and ig places them a moment after
    the process starts (seconds, on an emulated CPU): a program that repeats its
    inversion (churn) is traced there, for TRACE_SECONDS."""
    modes = ["auto", "ig", "client"] if expect == "trace" else ["auto"]
    runs = []
    for attach in modes:
        if attach == "ig" and churn:
            command = ["--timeout", str(TRACE_SECONDS), "--", churn]
        else:
            command = ["--", abba]
        result = igdeadlock(["trace", "--format", "json", "--image", IMAGE, "--attach", attach, *command])
        runs.append({"what": "trace", "where": "host", "attach": attach, **result})
    return runs


def family_runs(glib: Optional[str], python_abba: Optional[str]) -> List[dict]:
    """Locks beyond pthread, as users run them (auto: ig places the pthread
    probes where it can, this client the others)."""
    runs = []
    for what, command in (("glib", [glib]), ("python", ["/usr/bin/python3", python_abba])):
        if command[-1] is None:
            continue
        result = igdeadlock(["trace", "--format", "json", "--image", IMAGE, "--", *command])
        runs.append({"what": what, "where": "host", "attach": "auto", **result})
    return runs


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=TRACE_TIMEOUT).stdout.strip()


def container_runs(churn: str) -> List[dict]:
    """An inversion in a container, watched by container name."""
    for script in ("docker.sh", "build-images.sh"):
        command = [str(REPO / "tools/containers" / script)] + (["start"] if script == "docker.sh" else [])
        setup = subprocess.run(command, capture_output=True, text=True, timeout=TRACE_TIMEOUT)
        if setup.returncode != 0:
            return [{"what": "watch", "where": "container", "attach": "-", "returncode": setup.returncode,
                     "stderr": tail(setup.stdout + setup.stderr), "setup_failed": script}]
    runs = []
    for attach in ("auto", "ig"):
        name = f"igdl-{uuid.uuid4().hex[:8]}"
        try:
            docker("run", "-d", "--name", name, "-v", f"{Path(churn).resolve()}:/program:ro",
                   "igdeadlock-test/glibc", "/program")
        except subprocess.CalledProcessError as failed:
            runs.append({"what": "watch", "where": "container", "attach": attach, "returncode": failed.returncode,
                         "stderr": tail(failed.stderr or ""), "setup_failed": "docker run"})
            continue
        try:
            result = igdeadlock(["watch", "--image", IMAGE, "--attach", attach, "--container", name,
                                 "--duration", str(WATCH_SECONDS), "--format", "json"])
        finally:
            docker("rm", "-f", name, check=False)
        runs.append({"what": "watch", "where": "container", "attach": attach, "container": name, **result})
    return runs


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect", choices=("trace", "refuse"), required=True)
    parser.add_argument("--object", required=True)
    parser.add_argument("--verifier-stats", required=True)
    parser.add_argument("--abba", required=True)
    parser.add_argument("--churn")
    parser.add_argument("--glib")
    parser.add_argument("--python-abba")
    parser.add_argument("--containers", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    started = time.monotonic()
    results: dict = {
        "release": os.uname().release,
        "kprobes": os.path.isdir("/sys/bus/event_source/devices/kprobe"),
        "btf": os.path.exists(kernel.VMLINUX_BTF),
        "missing": [f.name for f in kernel.missing_features()],
    }
    results["verifier"] = verifier_figures(args.verifier_stats, args.object)
    results["runs"] = trace_runs(args.abba, args.expect, args.churn)
    if args.expect == "trace":
        results["runs"] += family_runs(args.glib, args.python_abba)
    if args.containers and args.churn:
        results["runs"] += container_runs(args.churn)
    results["seconds"] = round(time.monotonic() - started, 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
