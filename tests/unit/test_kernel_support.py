"""What a kernel lacks of what the gadget needs, said in one sentence."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import gadget_source
from igdeadlock import gadget
from igdeadlock.host import kernel

REPO = Path(__file__).resolve().parents[2]
VMLINUX_H = Path("/usr/include/gadget/amd64/vmlinux.h")

# What ig printed when the gadget was run on Debian 11's Linux 5.10 (a kernel-matrix guest).
IG_ERROR_ON_5_10 = ('gadget stream: UNKNOWN: starting operators: starting operator "oci": starting operator '
                    '"ebpf": creating eBPF collection: program trace_uprobe_spin_trylock: load program: invalid '
                    'argument: invalid func unknown#158 (26 line(s) omitted)')
IG_ERROR_STACK = ('creating eBPF collection: program trace_uprobe_mutex_unlock: load program: permission denied: '
                  'combined stack size of 3 calls is 528. Too large (2 line(s) omitted)')


def btf_with(tmp_path, names):
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\x9f\xeb" + b"".join(b"\0BPF_FUNC_" + n.encode() for n in names) + b"\0")
    return str(path)


def uprobe_pmu(tmp_path):
    path = tmp_path / "uprobe-type"
    path.write_text("7\n")
    return str(path)


def test_a_kernel_with_every_helper_lacks_nothing(tmp_path):
    names = [name[len("bpf_"):] for _, name, _ in gadget.REQUIRED_HELPERS]
    assert kernel.missing_features(btf_with(tmp_path, names), uprobe_pmu(tmp_path)) == []


def test_missing_helpers_are_found_by_name_in_the_kernels_btf(tmp_path):
    names = [name[len("bpf_"):] for _, name, _ in gadget.REQUIRED_HELPERS if name not in ("bpf_loop", "bpf_find_vma")]
    # a longer name that starts with a missing one is no match
    btf = btf_with(tmp_path, [*names, "loop_extra"])
    missing = kernel.missing_features(btf, uprobe_pmu(tmp_path))
    assert [f.name for f in missing] == ["bpf_find_vma", "bpf_loop"]
    sentence = kernel.describe_missing(missing, "5.16.0")
    assert sentence == ("this kernel (Linux 5.16.0) cannot run the igdeadlock gadget: it lacks the BPF helpers "
                        "bpf_find_vma and bpf_loop (igdeadlock needs Linux 5.17 or later with BTF; see README, "
                        "Kernels)")


def test_no_btf_or_uprobes_names_the_build_options(tmp_path):
    missing = kernel.missing_features(str(tmp_path / "absent"), str(tmp_path / "absent-too"))
    assert [f.name for f in missing] == ["BTF", "uprobes"]
    assert "built without CONFIG_DEBUG_INFO_BTF and CONFIG_UPROBE_EVENTS (BTF and uprobes)" in \
        kernel.describe_missing(missing, "5.4.0")


def test_this_machines_kernel_lacks_nothing():
    assert kernel.missing_features() == []


def test_a_load_error_of_an_old_kernel_becomes_one_sentence():
    sentence = kernel.explain_load_error(IG_ERROR_ON_5_10, "5.10.0-32-amd64")
    assert sentence is not None and "\n" not in sentence
    assert "lacks the BPF helper bpf_get_current_task_btf" in sentence
    assert "Linux 5.17 or later" in sentence
    assert "omitted" not in sentence and "unknown#" not in sentence
    # a daemon elsewhere: its kernel is not this one
    assert kernel.explain_load_error(IG_ERROR_ON_5_10).startswith("the daemon's kernel cannot run")


def test_newer_verifiers_name_the_helper_themselves():
    sentence = kernel.explain_load_error("program x: load program: invalid argument: unknown func bpf_loop#181")
    assert "lacks the BPF helper bpf_loop" in sentence


def test_a_verifier_rejection_is_its_last_word_not_its_log():
    sentence = kernel.explain_load_error(IG_ERROR_STACK)
    assert "program trace_uprobe_mutex_unlock" in sentence and "528 bytes of stack" in sentence
    other = kernel.explain_load_error("program p: load program: permission denied: R1 invalid mem access "
                                      "'scalar' (12 line(s) omitted)")
    assert other.startswith("the kernel's verifier rejected the gadget's program p: permission denied: R1 invalid")
    assert "omitted" not in other
    assert kernel.explain_load_error("connection reset by peer") is None


def test_every_newer_helper_the_gadget_calls_is_a_requirement():
    """A helper newer than the ring buffer (Linux 5.8) that the gadget calls
    is listed with the kernel's own id for it (vmlinux.h's enum bpf_func_id)."""
    ids = {m.group(1): int(m.group(2)) for m in re.finditer(r"BPF_FUNC_(\w+) = (\d+)", VMLINUX_H.read_text())}
    called = set(re.findall(r"\bbpf_(\w+)\(", gadget_source()))
    newer = {f"bpf_{name}" for name in called if ids.get(name, 0) >= gadget.REQUIRED_HELPERS_FROM}
    listed = {name: number for number, name, _ in gadget.REQUIRED_HELPERS}
    assert newer == set(listed)
    for name, number in listed.items():
        assert ids[name[len("bpf_"):]] == number, name
    assert gadget.MINIMUM_KERNEL == max((since for _, _, since in gadget.REQUIRED_HELPERS),
                                        key=lambda v: tuple(map(int, v.split("."))))
