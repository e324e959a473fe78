"""The built image: its program-map interactions and the diagrams in DEVELOPER.md."""

from __future__ import annotations

import re
import subprocess

from helpers import IMAGE, REPO

# The program -> map interactions the seed developer note requires (a superset is fine).
REQUIRED_INTERACTIONS = {
    ("trace_sched_process_exit", "gadget_mntns_filter_map"): {"Lookup"},
    ("trace_sched_process_exit", "thread_to_held_mutexes"): {"Delete"},
    ("trace_sched_process_exit", "gadget_heap"): {"Lookup"},
    ("trace_sched_process_exit", "dead_pids"): {"EventOutput"},
    ("trace_uprobe_mutex_lock", "gadget_mntns_filter_map"): {"Lookup"},
    ("trace_uprobe_mutex_lock", "thread_to_held_mutexes"): {"Lookup", "Update"},
    ("trace_uprobe_mutex_lock", "edges"): {"Update"},
    ("trace_uprobe_mutex_unlock", "gadget_mntns_filter_map"): {"Lookup"},
    ("trace_uprobe_mutex_unlock", "thread_to_held_mutexes"): {"Lookup", "Delete"},
}
REQUIRED_MAPS = {"dead_pids", "edges", "gadget_heap", "gadget_mntns_filter_map", "stackmap",
                 "thread_to_held_mutexes"}


def inspect(key: str) -> str:
    return subprocess.run(["ig", "image", "inspect", IMAGE, "--extra-info", key, "--verify-image=false",
                           "--auto-mount-filesystems"],
                          capture_output=True, text=True, check=True).stdout


def test_flowchart_shows_every_required_interaction():
    flowchart = inspect("ebpf.flowchart")
    found = {}
    for program, verbs, map_name in re.findall(r'^(\w+) -- "([\w+]+)" --> (\w+)$', flowchart, re.M):
        found.setdefault((program, map_name), set()).update(verbs.split("+"))
    for (program, map_name), verbs in REQUIRED_INTERACTIONS.items():
        assert verbs <= found.get((program, map_name), set()), (program, map_name, verbs)
    maps = set(re.findall(r'^(\w+)\[\("\w+"\)\]$', flowchart, re.M))
    assert REQUIRED_MAPS <= maps


def test_developer_md_diagrams_are_generated_from_the_image():
    generated = subprocess.run([str(REPO / "tools" / "gen-developer-md.sh"), "ig", IMAGE],
                               capture_output=True, text=True, check=True).stdout
    assert (REPO / "DEVELOPER.md").read_text() == generated, "run `make diagrams`"


def test_diagrams_need_no_mounted_tracefs_or_debugfs():
    """A freshly booted machine has neither mounted: generate the diagrams in a
    private mount namespace where both are unmounted."""
    script = (
        "for m in $(findmnt -rn -t tracefs,debugfs -o TARGET | sort -r); do umount -l \"$m\"; done; "
        "if findmnt -rn -t tracefs,debugfs >/dev/null; then echo 'still mounted' >&2; exit 3; fi; "
        f"exec {REPO / 'tools' / 'gen-developer-md.sh'} ig {IMAGE}"
    )
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "DEVELOPER.md").read_text()


def test_every_datasource_and_gadget_field_is_described(ig_daemon):
    from igdeadlock.ig.service import GadgetService, parse_address
    from igdeadlock.session import gadget_params

    with GadgetService(parse_address(ig_daemon)) as service:
        info = service.gadget_info(IMAGE, gadget_params(250, IMAGE))
    names = {ds.name for ds in info.dataSources}
    assert {"edges", "stacks", "files", "counters", "dead_pids"} <= names
    for ds in info.dataSources:
        assert ds.annotations.get("description"), ds.name
        for field in ds.fields:
            if "src:ebpf" in field.tags:
                assert field.annotations.get("description"), (ds.name, field.fullName)
