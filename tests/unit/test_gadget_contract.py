"""The gadget's contract is written once per side: bpf/contract.h (C enums and
#defines) and igdeadlock/gadget.py must agree, the probes of program.bpf.c
take what the companion places, and gadget.yaml must describe what the
companion reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import pytest
import yaml

from igdeadlock import gadget

REPO = Path(__file__).resolve().parents[2]
CONTRACT = (REPO / "bpf" / "contract.h").read_text()  # the enums and bit layouts
PROBES = (REPO / "program.bpf.c").read_text()  # the entry file: datasources and probes
METADATA = yaml.safe_load((REPO / "gadget.yaml").read_text())

# C enum -> (Python IntEnum, prefix of its constants in C)
ENUMS = {
    "lock_mode": (gadget.LockMode, "LOCK_MODE_"),
    "lock_kind": (gadget.LockKind, "LOCK_KIND_"),
    "acquire": (gadget.Acquire, "ACQUIRE_"),
    "libc": (gadget.Libc, "LIBC_"),
    "process_change": (gadget.ProcessChange, "PROCESS_"),
    "tracking_stat": (gadget.Stat, "STAT_"),
    "misuse": (gadget.Misuse, "MISUSE_"),
    "acquired_when": (gadget.AcquiredWhen, "ACQUIRED_"),
    "snapshot_call": (gadget.SnapshotCall, "SNAPSHOT_"),
}


def c_enum(name: str) -> Dict[str, int]:
    body = re.search(r"enum %s \{(.*?)\};" % name, CONTRACT, re.S)
    assert body, f"bpf/contract.h has no enum {name}"
    return {m.group(1): int(m.group(2), 0) for m in re.finditer(r"(\w+)\s*=\s*(\w+)\s*,", body.group(1))}


def c_define(name: str, source: str = CONTRACT) -> int:
    match = re.search(r"^#define %s (\w+)" % name, source, re.M)
    assert match, f"the gadget does not define {name} where it is looked for"
    return int(match.group(1), 0)


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_enums_match(name):
    python, prefix = ENUMS[name]
    assert c_enum(name) == {prefix + member.name: member.value for member in python}


def test_bit_layouts_match():
    assert c_define("COOKIE_LIBC_MASK") == gadget.COOKIE_LIBC_MASK
    assert c_define("COOKIE_SIZE_SHIFT") == gadget.COOKIE_SIZE_SHIFT
    assert c_define("SITE_CPU_SHIFT") == gadget.SITE_CPU_SHIFT
    assert gadget.attach_cookie("musl", 0x1_0000_0000) == gadget.Libc.MUSL | gadget.COOKIE_SIZE_MAX << 32


def test_lock_function_cookies_match():
    for name in ("KIND", "ARG", "MODE", "HOW", "RESULT", "FLAGS"):
        assert c_define(f"COOKIE_{name}_SHIFT") == getattr(gadget, f"COOKIE_{name}_SHIFT"), name
    for name in ("RECURSIVE", "WAITS_ELSEWHERE", "ANY_RELEASER", "WAIT_INTENT"):
        assert c_define(f"LOCK_FLAG_{name}") == getattr(gadget, f"LOCK_FLAG_{name}"), name
    assert c_define("MAX_LOCK_ARGUMENT", PROBES) == gadget.MAX_LOCK_ARGUMENT
    for program in (gadget.LOCK_FUNCTION_PROGRAM, gadget.LOCK_FUNCTION_RETURN_PROGRAM,
                    gadget.UNLOCK_FUNCTION_PROGRAM, gadget.DESTROY_FUNCTION_PROGRAM):
        assert re.search(r'SEC\("uprobe/gadget_program_disabled"\)\nint (?:BPF_KRETPROBE\()?%s\b' % program, PROBES)
    cookie = gadget.lock_function_cookie("musl", gadget.LockKind.GMUTEX, 2, gadget.LockMode.SHARED,
                                         gadget.Acquire.TRY, gadget.AcquiredWhen.TRUE, gadget.LOCK_FLAG_RECURSIVE)
    assert cookie & gadget.COOKIE_LIBC_MASK == gadget.Libc.MUSL
    assert (cookie >> gadget.COOKIE_KIND_SHIFT) & 0xFF == gadget.LockKind.GMUTEX
    assert (cookie >> gadget.COOKIE_ARG_SHIFT) & 7 == 2
    assert (cookie >> gadget.COOKIE_MODE_SHIFT) & 1 == gadget.LockMode.SHARED
    assert (cookie >> gadget.COOKIE_HOW_SHIFT) & 3 == gadget.Acquire.TRY
    assert (cookie >> gadget.COOKIE_RESULT_SHIFT) & 3 == gadget.AcquiredWhen.TRUE
    assert (cookie >> gadget.COOKIE_FLAGS_SHIFT) & 0xFF == gadget.LOCK_FLAG_RECURSIVE
    with pytest.raises(ValueError):
        gadget.lock_function_cookie("glibc", gadget.LockKind.USER, 5, 0, 0)


def test_every_counter_has_a_name():
    assert set(gadget.COUNTER_NAMES) == set(gadget.Stat)


def test_datasources_and_parameters_are_in_the_metadata():
    datasources = set(METADATA["datasources"])
    events = {gadget.RESUMED, gadget.PROCESSES, gadget.DEAD_PIDS, gadget.MISUSE, gadget.WAITING}
    assert set(gadget.MAP_ITERATORS) | events <= datasources
    keys = {p["key"] for p in METADATA["params"]["ebpf"].values()}
    for param in (gadget.TREE_PID_PARAM, gadget.PAUSE_NEW_PROCESSES_PARAM, gadget.HANGS_ONLY_PARAM):
        assert param.rpartition(".")[2] in keys
    assert re.search(r"GADGET_ITER\(%s, waiting_thread, " % gadget.WAITING, PROBES)
    for name in ("GADGET_MAPITER", "GADGET_TRACER"):
        assert re.search(name, PROBES)


def test_the_metadata_says_what_the_enums_mean():
    """A field that carries an enum names each value in its description."""
    described = METADATA["datasources"]["edges"]["fields"]["to_how"]["annotations"]["description"]
    for member in gadget.Acquire:
        assert f"{member.value} {gadget.ACQUIRE_NAMES[member]}" in described or str(member.value) in described


@pytest.mark.parametrize("arch,define", [("amd64", "x86"), ("arm64", "arm64")])
def test_kconfig_externs_are_ones_igs_loader_takes(tmp_path, arch, define):
    """cilium/ebpf refuses a weak __kconfig extern, and `ig image build` checks
    one architecture's object at random: a weak one fails some builds only."""
    clang = shutil.which("clang") or shutil.which("clang-19")
    if clang is None:
        pytest.fail("clang is missing: run `make setup`")
    obj = tmp_path / f"{arch}.o"
    subprocess.run([clang, "-target", "bpf", "-O2", "-g", f"-D__TARGET_ARCH_{define}",
                    f"-I/usr/include/gadget/{arch}", "-I/usr/include/gadget", f"-I{REPO}", "-c",
                    str(REPO / "program.bpf.c"), "-o", str(obj)], check=True, capture_output=True)
    symbols = subprocess.run(["readelf", "-sW", str(obj)], check=True, capture_output=True, text=True).stdout
    kconfig = [line.split() for line in symbols.splitlines() if re.search(r"\sCONFIG_\w+$", line)]
    assert all(fields[4] == "GLOBAL" for fields in kconfig), kconfig
    if arch == "arm64":
        assert kconfig, "the arm64 object reads CONFIG_ARM64_PAGE_SHIFT"
