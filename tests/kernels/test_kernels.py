"""The kernel matrix: the gadget on each kernel of tools/kernels/kernels.txt,
booted in a guest that sees this machine's files (tools/kernels/kvm.py).

In each guest, tests/kernels/guest_checks.py measures what the gadget does
there; these tests judge it. A kernel that must trace: every program loads with
stack and complexity headroom, `igdeadlock trace` finds an AB/BA inversion
whichever way the uprobes are attached (`auto` picking ig where the kernel has
kprobes), and an inversion in a Docker container is found. A kernel that must
refuse: igdeadlock says in one sentence which feature it lacks, and prints no
verifier log.

make test-kernels runs them (KERNELS="6.1 5.10" for some only); the matrix of
the last run is written to build/kernels/matrix.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, compile_program, gadget_object, pkg_config, require_root_and_ig

sys.path.insert(0, str(REPO / "tests" / "e2e"))
from test_verifier import INSNS_SHARE, STACK_BUDGET  # noqa: E402

_spec = importlib.util.spec_from_file_location("kvm", REPO / "tools/kernels/kvm.py")
kvm = importlib.util.module_from_spec(_spec)
sys.modules["kvm"] = kvm  # its dataclasses look their module up
_spec.loader.exec_module(kvm)  # type: ignore[union-attr]

WORK = REPO / "build" / "kernels"  # seen by the guests (their /tmp is their own)
SELECTED = os.environ.get("KERNELS", "").split()
KERNELS = [k for k in kvm.read_kernels() if not SELECTED or k.name in SELECTED]
GUEST_TIMEOUT = 1800  # seconds: guests without KVM emulate their CPU
MATRIX: dict = {}


@pytest.fixture(scope="session")
def prepared():
    """What the guests run, built here: test programs, the tool, the image's object."""
    require_root_and_ig()
    WORK.mkdir(parents=True, exist_ok=True)
    obj = WORK / "program.bpf.o"
    obj.write_bytes(gadget_object())
    stats = subprocess.run([str(REPO / "tools/verifier/build.sh")], check=True, capture_output=True,
                           text=True).stdout.strip()
    containers = subprocess.run([str(REPO / "tools/containers/docker.sh"), "start"], capture_output=True, text=True)
    assert containers.returncode == 0, containers.stdout + containers.stderr
    images = subprocess.run([str(REPO / "tools/containers/build-images.sh")], capture_output=True, text=True)
    assert images.returncode == 0, images.stdout + images.stderr  # leaves the root filesystems cached
    glib = compile_program("glib_abba", flags=("-O0", "-g", "-fno-omit-frame-pointer",
                                               *pkg_config("--cflags", "glib-2.0")),
                           libs=pkg_config("--libs", "glib-2.0"))
    return {"object": obj, "verifier_stats": stats, "abba": compile_program("abba"),
            "churn": compile_program("churn"), "glib": glib, "python_abba": REPO / "tests/programs/py_abba.py"}


def run_guest(kernel, prepared) -> dict:
    out = WORK / f"results-{kernel.name}"
    command = [sys.executable, str(REPO / "tests/kernels/guest_checks.py"), "--expect", kernel.expect,
               "--object", str(prepared["object"]), "--verifier-stats", prepared["verifier_stats"],
               "--abba", str(prepared["abba"]), "--out", f"{kvm.GUEST_OUT}/files/results.json"]
    if kernel.expect == "trace":
        command += ["--churn", str(prepared["churn"]), "--containers", "--glib", str(prepared["glib"]),
                    "--python-abba", str(prepared["python_abba"])]
    guest = kvm.run_in_guest(kernel, command, timeout=GUEST_TIMEOUT, out=out,
                             env={"PYTHONPATH": str(REPO / "python")})
    assert guest.returncode == 0, f"the guest of {kernel.name} failed ({guest.returncode}):\n{guest.stdout}"
    results = json.loads((out / "results.json").read_text())
    results["package"] = (kernel.dir / "package").read_text().split()[0]
    MATRIX[kernel.name] = (kernel, results)
    write_matrix()
    return results


def run_named(results, what, where, attach):
    (found,) = [r for r in results["runs"] if (r["what"], r["where"], r["attach"]) == (what, where, attach)]
    return found


@pytest.mark.parametrize("kernel", KERNELS, ids=[k.name for k in KERNELS])
def test_kernel(kernel, prepared):
    results = run_guest(kernel, prepared)
    if kernel.expect == "refuse":
        assert results["missing"], results
        (refused,) = results["runs"]
        assert refused["returncode"] != 0, refused
        (sentence,) = [line for line in refused["stderr"] if line.startswith("igdeadlock:")]
        assert "cannot run the igdeadlock gadget" in sentence and results["missing"][-1] in sentence, sentence
        # one sentence, no verifier log
        assert len(refused["stderr"]) == 1 and "omitted" not in sentence and "insn" not in sentence, refused
        return

    assert results["missing"] == [], results
    assert results["kprobes"], "a kernel of the matrix that traces has kprobes: ig attaches the uprobes there"
    for config, figures in results["verifier"].items():
        assert figures["loaded"], (config, figures)
        assert figures["max_stack"] <= STACK_BUDGET, (config, figures)
        assert figures["max_insns"] <= INSNS_SHARE * figures["insns_limit"], (config, figures)
    for attach in ("auto", "ig", "client"):
        run = run_named(results, "trace", "host", attach)
        assert run["returncode"] == 0, run
        assert "potential-deadlock" in run["kinds"], run
        traced = [p for p in run["processes"] if p["comm"].startswith(("abba", "churn"))]
        assert traced and all(p["traced"] for p in traced), run["processes"]
    # auto lets ig attach where the kernel has kprobes: the client does not say it attaches
    auto = run_named(results, "trace", "host", "auto")
    assert not any("igdeadlock attaches them itself" in line for line in auto["stderr"]), auto
    assert any("igdeadlock attaches them itself" in line
               for line in run_named(results, "trace", "host", "client")["stderr"])
    # locks beyond pthread, with auto: ig places the pthread probes, igdeadlock the others
    glib = run_named(results, "glib", "host", "auto")
    assert "potential-deadlock" in glib["kinds"] and "gmutex" in glib["lock_kinds"], glib
    python = run_named(results, "python", "host", "auto")
    assert python["kinds"] == ["potential-deadlock"] and python["lock_kinds"] == ["semaphore"], python
    assert any(frame.startswith(("lock_a_then_b@py_abba.py", "lock_b_then_a@py_abba.py"))
               for frame in python["top_frames"]), python  # Python stacks
    for attach in ("auto", "ig"):
        watched = run_named(results, "watch", "container", attach)
        assert watched["returncode"] == 0, watched
        assert watched["kinds"] and set(watched["kinds"]) == {"potential-deadlock"}, watched
        assert watched["containers"] == [watched["container"]], watched


def write_matrix() -> None:
    """build/kernels/matrix.md: the measured matrix, as README shows it."""
    lines = ["| kernel | Debian package | kprobes | loads | deepest stack (B) | insns (max) | verify (ms) | "
             "AB/BA found: auto / ig / client | in a container: auto / ig | GMutex, Python (auto) | "
             "coverage where ig attaches: host / container |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, (kernel, results) in sorted(MATRIX.items(), key=lambda item: kvm.natural_key(item[0])):
        figures = results["verifier"].get("watch", {})
        loads = "yes" if figures.get("loaded") else "no"

        def found(what, where, attach, results=results):
            runs = [r for r in results["runs"] if (r["what"], r["where"], r["attach"]) == (what, where, attach)]
            return "yes" if runs and "potential-deadlock" in runs[0].get("kinds", []) else "no"

        def coverage(what, where, results=results):
            """What the report says of the programs ig attached to: traced of seen."""
            runs = [r for r in results["runs"] if (r["what"], r["where"], r["attach"]) == (what, where, "ig")]
            # the host run's own program; everything a container watch saw is the container's
            seen = [p for p in (runs[0].get("processes") or [] if runs else [])
                    if where == "container" or (p.get("comm") or "").startswith(("abba", "churn"))]
            if not seen:
                return "-"
            # where ig attaches, a process counts as traced once it sent lock events
            return f"{sum(1 for p in seen if p.get('traced'))} of {len(seen)} traced"

        if kernel.expect == "refuse":
            sentence = next((line for r in results["runs"] for line in r["stderr"]), "")
            lines.append(f"| {results['release']} | {results['package']} | {'yes' if results['kprobes'] else 'no'} "
                         f"| no | - | - | - | refused: “{sentence}” | - | - | - |")
            continue
        lines.append(
            f"| {results['release']} | {results['package']} | {'yes' if results['kprobes'] else 'no'} | {loads} "
            f"| {figures.get('max_stack', '-')} | {figures.get('max_insns', '-')} | {figures.get('verify_ms', '-')} "
            f"| {found('trace', 'host', 'auto')} / {found('trace', 'host', 'ig')} / {found('trace', 'host', 'client')} "
            f"| {found('watch', 'container', 'auto')} / {found('watch', 'container', 'ig')} "
            f"| {found('glib', 'host', 'auto')}, {found('python', 'host', 'auto')} "
            f"| {coverage('trace', 'host')} / {coverage('watch', 'container')} |")
    (WORK / "matrix.md").write_text("\n".join(lines) + "\n")
