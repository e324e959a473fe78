"""Client-side attachment helpers that need no kernel: probe points, program grouping, BTF names."""

from __future__ import annotations

import json
import struct

from igdeadlock.host.attach import ProbePoint, _share_maps, probe_points
from igdeadlock.host.bpf import ProgramInfo, parse_btf_function_names


def test_probe_points_from_ig_program_listing():
    listing = json.dumps([
        {"Section": "uprobe/libc:pthread_mutex_lock", "Source": "trace_uprobe_mutex_lock:\n  0: ..."},
        {"Section": "uretprobe/libc:pthread_mutex_trylock", "Source": "trace_uretprobe_mutex_trylock:\n"},
        {"Section": "tracepoint/sched/sched_process_exit", "Source": "trace_sched_process_exit:\n"},
    ]).encode()
    assert probe_points(listing) == [
        ProbePoint("trace_uprobe_mutex_lock", "libc", "pthread_mutex_lock", False),
        ProbePoint("trace_uretprobe_mutex_trylock", "libc", "pthread_mutex_trylock", True),
    ]


def test_mutex_unlock_and_try_return_probes_go_on_musl_only_unless_unlocks_are_checked():
    """ig leaves them alone (their section is disabled); the client places them
    where a mutex's release or a failed try cannot be known from its owner field,
    and the unlock probe everywhere on request."""
    listing = json.dumps([
        {"Section": "uprobe/gadget_program_disabled", "Source": "trace_uprobe_mutex_unlock:\n"},
        {"Section": "uprobe/gadget_program_disabled", "Source": "trace_uretprobe_mutex_trylock:\n"},
        {"Section": "uprobe/gadget_program_disabled", "Source": "trace_uprobe_spin_lock_taken:\n"},
    ]).encode()
    musl = frozenset({"musl"})
    assert probe_points(listing) == [
        ProbePoint("trace_uprobe_mutex_unlock", "libc", "pthread_mutex_unlock", False, musl),
        ProbePoint("trace_uretprobe_mutex_trylock", "libc", "pthread_mutex_trylock", True, musl)]
    assert probe_points(listing, unlock_checks=True) == [
        ProbePoint("trace_uprobe_mutex_unlock", "libc", "pthread_mutex_unlock", False, None),
        ProbePoint("trace_uretprobe_mutex_trylock", "libc", "pthread_mutex_trylock", True, musl)]


def test_programs_of_one_run_are_grouped_through_shared_maps_in_any_order():
    # destroy shares a map only with lock, which shares one with unlock; another run is apart
    run = [ProgramInfo(30, "destroy", (7,), 0, 0), ProgramInfo(20, "unlock", (1,), 0, 0),
           ProgramInfo(10, "lock", (1, 7), 0, 0)]
    other = [ProgramInfo(40, "lock", (9,), 0, 0)]
    groups = sorted(sorted(p.id for p in g) for g in _share_maps(run + other))
    assert groups == [[10, 20, 30], [40]]


def test_btf_function_names():
    strings = b"\0int\0main_prog\0"
    types = struct.pack("<III", 1, (1 << 24), 4) + struct.pack("<I", 32)  # INT "int"
    types += struct.pack("<III", 0, (13 << 24), 1)  # FUNC_PROTO returning int, no params
    types += struct.pack("<III", 5, (12 << 24), 2)  # FUNC "main_prog" of proto 2
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    assert parse_btf_function_names(header + types + strings) == {3: "main_prog"}
