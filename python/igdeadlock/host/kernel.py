"""Whether this kernel can run the gadget, and why not, in one sentence.

The gadget needs BTF and BPF helpers that came with Linux 5.8 to 5.17
(gadget.REQUIRED_HELPERS). On an older kernel ig would stop at the first
program the verifier rejects and print part of its log; igdeadlock checks
first (this host's kernel, when the daemon runs here) and, for a daemon
elsewhere, turns the load error it reports into a sentence that names what is
missing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

from igdeadlock.gadget import MINIMUM_KERNEL, REQUIRED_HELPERS, helper_name, helper_since

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe/type"


@dataclass(frozen=True)
class MissingFeature:
    name: str  # a BPF helper's name, "BTF" or "uprobes"
    since: str  # the first Linux release with it, "" for a build option
    option: str = ""  # the kernel build option that gives it, if that is the issue


def kernel_release() -> str:
    return os.uname().release


def missing_features(btf_path: str = VMLINUX_BTF, uprobe_pmu: str = UPROBE_PMU) -> List[MissingFeature]:
    """What the gadget needs and this kernel lacks, oldest first. Helpers are
    looked up by name in the kernel's own BTF (its enum bpf_func_id names
    every helper it has), so nothing is loaded to find out."""
    missing: List[MissingFeature] = []
    if not os.path.exists(uprobe_pmu):
        missing.append(MissingFeature("uprobes", "", "CONFIG_UPROBE_EVENTS"))
    try:
        with open(btf_path, "rb") as btf:
            strings = btf.read()
    except OSError:
        return [MissingFeature("BTF", "", "CONFIG_DEBUG_INFO_BTF"), *missing]
    for _, name, since in REQUIRED_HELPERS:
        if b"\0BPF_FUNC_" + name[len("bpf_"):].encode() + b"\0" not in strings:
            missing.append(MissingFeature(name, since))
    return missing


def _names(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe_missing(missing: Sequence[MissingFeature], release: Optional[str] = None) -> str:
    """One sentence: which features the kernel lacks and what it takes."""
    kernel = f"this kernel (Linux {release})" if release else "the daemon's kernel"
    options = [f.option for f in missing if f.option]
    helpers = [f.name for f in missing if not f.option]
    parts = []
    if options:
        parts.append(f"was built without {_names(options)} ({_names([f.name for f in missing if f.option])})")
    if helpers:
        noun = "the BPF helper" if len(helpers) == 1 else "the BPF helpers"
        parts.append(f"lacks {noun} {_names(helpers)}")
    return (f"{kernel} cannot run the igdeadlock gadget: it {' and '.join(parts)} "
            f"(igdeadlock needs Linux {MINIMUM_KERNEL} or later with BTF; see README, Kernels)")


_UNKNOWN_HELPER = re.compile(r"(?:invalid|unknown) func (?:unknown|(bpf_\w+))#(\d+)")
_NOT_SUPPORTED = re.compile(r"([\w ]+?) not supported \(requires >= v([\d.]+)\)")
_STACK = re.compile(r"combined stack size of (\d+) calls is (\d+)")
_LOAD_FAILED = re.compile(r"program (\w+): load program: (.*?)(?: \(\d+ line\(s\) omitted\))?$")


def explain_load_error(error: str, release: Optional[str] = None) -> Optional[str]:
    """A sentence for an error ig reports when the gadget does not load (None
    when the error is not about loading): what the kernel lacks if that is
    the reason, else the verifier's own last word, never its log."""
    helper = _UNKNOWN_HELPER.search(error)
    if helper:
        name = helper.group(1) or helper_name(int(helper.group(2))) or f"BPF helper #{helper.group(2)}"
        return describe_missing([MissingFeature(name, helper_since(name) or "")], release)
    feature = _NOT_SUPPORTED.search(error)
    if feature:
        kernel = f"this kernel (Linux {release})" if release else "the daemon's kernel"
        return (f"{kernel} cannot run the igdeadlock gadget: it lacks {feature.group(1).strip()} "
                f"(Linux {feature.group(2)}; igdeadlock needs Linux {MINIMUM_KERNEL} or later with BTF)")
    stack = _STACK.search(error)
    failed = _LOAD_FAILED.search(error.splitlines()[0] if error else "")
    if stack:
        program = f" program {failed.group(1)}" if failed else ""
        return (f"the kernel's verifier rejected the gadget's{program}: its call chain of {stack.group(1)} "
                f"functions needs {stack.group(2)} bytes of stack, more than the 512 allowed (a bug: please "
                f"report it with `igdeadlock --version` and `uname -r`)")
    if failed:
        return (f"the kernel's verifier rejected the gadget's program {failed.group(1)}: {failed.group(2)} "
                f"(run `ig run` of the image with -v for the verifier's log)")
    return None
