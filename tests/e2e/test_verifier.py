"""Every program of the built gadget loads on this kernel, with room to spare.

The gadget once sat a few bytes under the verifier's 512-byte stack limit, and
a toolchain change pushed it over: nothing loaded. These tests load the image's
own object with the loader ig uses (tools/verifier) under each way igdeadlock
runs it, print the verifier's figures, and fail when a program's deepest call
chain needs more than STACK_BUDGET bytes or a program more than half of the
verifier's instruction budget."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from helpers import REPO, gadget_object, gadget_source, require_root_and_ig

STACK_BUDGET = 448  # of the verifier's 512 bytes
INSNS_SHARE = 0.5  # of the verifier's instruction budget

# The global constants each way of running the gadget loads it with: the
# verifier drops the code their values make dead, so each is measured.
CONFIGURATIONS = {
    "watch": [],
    "trace": ["tree_pid=1", "pause_new_processes=true"],
    "containers": ["gadget_filter_by_mntns=true"],
    "filters": ["targ_pid=1", "targ_uid=0", "gadget_filter_by_mntns=true"],
}


@pytest.fixture(scope="module")
def verifier_stats():
    return subprocess.run([str(REPO / "tools/verifier/build.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def measured(verifier_stats, tmp_path_factory):
    require_root_and_ig()
    obj = tmp_path_factory.mktemp("gadget") / "program.bpf.o"
    obj.write_bytes(gadget_object())
    reports = {}
    for name, settings in CONFIGURATIONS.items():
        args = [verifier_stats, *[a for s in settings for a in ("-set", s)], str(obj)]
        run = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert run.returncode in (0, 1), run.stderr
        reports[name] = json.loads(run.stdout)
    return reports


def figures_table(reports) -> str:
    """Per program: the worst figures over the configurations."""
    rows = {}
    for report in reports.values():
        for p in report["programs"]:
            row = rows.setdefault(p["name"], [0, 0, 0, 0, True])
            row[0] = max(row[0], p["combined_stack"])
            row[1] = max(row[1], p["stack_with_callbacks"])
            row[2] = max(row[2], p["insns_processed"])
            row[3] = max(row[3], p["verification_usec"])
            row[4] = row[4] and p["loaded"]
    lines = [f"{'program':<36} {'stack':>5} {'+cb':>5} {'insns':>7} {'verify ms':>9}  loaded"]
    for name, (stack, with_cb, insns, usec, loaded) in sorted(rows.items(), key=lambda r: -r[1][0]):
        lines.append(f"{name:<36} {stack:>5} {with_cb:>5} {insns:>7} {usec / 1000:>9.1f}  {loaded}")
    return "\n".join(lines)


def test_every_program_loads_with_stack_and_complexity_headroom(measured, capsys):
    with capsys.disabled():
        print(f"\nverifier figures on this kernel (worst of {', '.join(measured)}; "
              f"stack: bytes of the deepest call chain, +cb: with callbacks counted):")
        print(figures_table(measured))
    failures = []
    for config, report in measured.items():
        for p in report["programs"]:
            where = f"{p['name']} ({config})"
            if not p["loaded"]:
                failures.append(f"{where} does not load: {p.get('error', '')}")
            if p["combined_stack"] > STACK_BUDGET:
                failures.append(f"{where}: call chain {' -> '.join(p['combined_stack_path'])} needs "
                                f"{p['combined_stack']} bytes of stack (budget {STACK_BUDGET} of 512)")
            if p["insns_processed"] > INSNS_SHARE * p["insns_limit"]:
                failures.append(f"{where}: {p['insns_processed']} instructions processed, more than "
                                f"{INSNS_SHARE:.0%} of the verifier's {p['insns_limit']}")
    assert not failures, "\n".join(failures)


def test_figures_cover_every_program_of_the_object(measured):
    """A program the tool could not see would be a program nobody measured."""
    source = gadget_source()
    programs = set(re.findall(r"^int (?:BPF_\w+\()?(\w+)", source, re.M))
    for report in measured.values():
        assert {p["name"] for p in report["programs"]} == programs
        for p in report["programs"]:
            assert p["functions"] and p["functions"][0]["name"] == p["name"]
            assert p["insns_processed"] > 0, p


def test_the_loader_is_the_one_ig_uses():
    """The figures are the verifier's view of what ig itself loads: the same
    cilium/ebpf version as the ig that tools/ig builds."""
    def cilium(go_mod):
        return re.search(r"github.com/cilium/ebpf (v\S+)", (REPO / go_mod).read_text()).group(1)

    assert cilium("tools/verifier/go.mod") == cilium("tools/ig/go.mod")
