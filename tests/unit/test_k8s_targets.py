"""--k8s without a cluster: which gadget pods run on this host (the client then
attaches the uprobes to the programs they hold), and a reconnection that follows
a gadget pod's replacement on its node. A stand-in kubectl (a shell script) answers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from igdeadlock import cli
from igdeadlock.host import attach, procfs
from igdeadlock.host.bpf import ProgramInfo
from igdeadlock.ig import k8s
from igdeadlock.watch import TargetRunner

RUNNING = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
ID_A = "a" * 64
ID_B = "b" * 64


def pod_item(name: str, node: str, container_id: str = "", ready: bool = True, deleting: bool = False) -> dict:
    metadata: dict = {"name": name, "namespace": "gadget"}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:01Z"
    status: dict = {"phase": "Running", "containerStatuses": [{"ready": ready, "state": RUNNING if container_id
                                                                else {"waiting": {}}}]}
    if container_id:
        status["containerStatuses"][0]["containerID"] = f"containerd://{container_id}"
    return {"metadata": metadata, "spec": {"nodeName": node}, "status": status}


def test_gadget_pods_carry_their_running_containers_ids():
    listing = json.dumps({"items": [pod_item("gadget-1", "n1", ID_A), pod_item("gadget-2", "n2")]})
    one, two = k8s.parse_gadget_pods(listing)
    assert (one.name, one.ready, one.container_ids) == ("gadget-1", True, (ID_A,))
    assert two.container_ids == ()  # not started yet: no id


def test_a_gadget_pod_being_deleted_is_not_ready_and_its_successor_is_chosen():
    pods = k8s.parse_gadget_pods(json.dumps({"items": [
        pod_item("gadget-old", "n1", ID_A, deleting=True), pod_item("gadget-new", "n1", ID_B),
        pod_item("gadget-other", "n2", "c" * 64)]}))
    assert {p.name: p.ready for p in pods} == {"gadget-old": False, "gadget-new": True, "gadget-other": True}
    chosen = k8s.pod_on_node(pods, "n1")
    assert chosen is not None and chosen.name == "gadget-new"
    assert k8s.pod_on_node(pods, "n3") is None


def fake_proc(root: Path, cgroups: dict) -> str:
    for pid, text in cgroups.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(text)
    (root / "self").mkdir()  # not a pid: skipped
    return str(root)


@pytest.mark.parametrize("line", [
    f"4:memory:/kubepods/besteffort/pod1234/{ID_A}\n",  # cgroup v1, cgroupfs driver
    f"0::/kubepods.slice/kubepods-pod1234.slice/cri-containerd-{ID_A}.scope\n",  # v2, systemd driver
])
def test_a_containers_processes_are_those_of_this_host_in_its_cgroup(tmp_path, line):
    proc = fake_proc(tmp_path, {1: "0::/init.scope\n", 42: line, 43: line})
    assert procfs.container_pids([ID_A], proc) == [42, 43]
    assert procfs.container_pids([ID_B], proc) == []  # it runs elsewhere
    assert procfs.container_pids([], proc) == []
    assert procfs.container_pids(["a"], proc) == []  # too short to tell


def test_on_this_real_host_an_unknown_container_has_no_processes():
    assert procfs.container_pids(["f" * 64]) == []


class FakeBpf:
    """Two runs of the same gadget: ours, held by the gadget pod's process 10,
    and a newer one of another daemon (process 20)."""

    PROGRAMS = {1: ("lock", (100,)), 2: ("unlock", (100,)), 7: ("lock", (200,)), 8: ("unlock", (200,))}

    def program_ids(self):
        return iter(self.PROGRAMS)

    def program(self, prog_id):
        name, maps = self.PROGRAMS[prog_id]
        return ProgramInfo(prog_id, name, maps, 0, 0)


def test_the_programs_of_a_gadget_pod_are_those_its_processes_hold(monkeypatch):
    monkeypatch.setattr(attach, "Bpf", FakeBpf)
    monkeypatch.setattr(attach, "programs_held_by", lambda pid: {10: {1, 2}, 20: {7, 8}}.get(pid, set()))
    names = {"lock", "unlock"}
    # by name alone, the newest run wins: another daemon's, whose maps the gadget pod never reads
    assert attach.find_programs(names, set(), timeout=0) == {"lock": 7, "unlock": 8}
    assert attach.find_programs(names, set(), timeout=0, owners=[10, 11]) == {"lock": 1, "unlock": 2}
    assert attach.find_programs(names, set(), timeout=0, owner=20) == {"lock": 7, "unlock": 8}
    with pytest.raises(attach.AttachError):
        attach.find_programs(names, set(), timeout=0, owners=[30])


@pytest.fixture
def kubectl(tmp_path, monkeypatch):
    """A stand-in kubectl: `get pods` prints $PODS_FILE, `port-forward` logs its
    arguments and says it forwards (until killed)."""
    log, pods = tmp_path / "kubectl.log", tmp_path / "pods.json"
    script = tmp_path / "bin" / "kubectl"
    script.parent.mkdir()
    script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case " $* " in
*" get pods "*) cat {pods} ;;
*" port-forward "*) echo "Forwarding from 127.0.0.1:4321 -> 8080"; exec sleep 60 ;;
*) exit 1 ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return log, pods


def test_a_reconnection_goes_to_the_pod_that_replaced_a_deleted_one(kubectl):
    log, pods = kubectl
    pods.write_text(json.dumps({"items": [pod_item("gadget-old", "n1", ID_A)]}))
    (first,) = k8s.gadget_pods()
    forward = k8s.PortForward(first)
    try:
        assert str(forward.connect(timeout=10)) == "tcp://127.0.0.1:4321"
        # the pod is deleted; its DaemonSet starts another one on the node, under another name
        pods.write_text(json.dumps({"items": [pod_item("gadget-old", "n1", ID_A, deleting=True),
                                              pod_item("gadget-new", "n1", "", ready=False)]}))
        with pytest.raises(k8s.KubernetesError, match="no ready gadget pod on node n1"):
            forward.connect(timeout=10)
        pods.write_text(json.dumps({"items": [pod_item("gadget-new", "n1", ID_B)]}))
        forward.connect(timeout=10)
        assert forward.pod.name == "gadget-new"
    finally:
        forward.close()
    forwards = [line.split() for line in log.read_text().splitlines() if "port-forward" in line]
    assert [next(w for w in words if w.startswith("pod/")) for words in forwards] == ["pod/gadget-old",
                                                                                       "pod/gadget-new"]


def test_a_gadget_pod_on_this_host_is_a_local_target_that_traces_containers_only(kubectl, monkeypatch):
    _, pods = kubectl
    pods.write_text(json.dumps({"items": [pod_item("gadget-here", "n1", ID_A),
                                          pod_item("gadget-away", "n2", ID_B)]}))
    monkeypatch.setattr(procfs, "container_pids", lambda ids: [10] if ID_A in ids else [])
    args = cli.build_parser().parse_args(["watch", "--k8s", "--namespace", "shop"])
    here, away = cli.watch_targets(args, [])
    assert (here.node, here.local, away.node, away.local) == ("n1", True, "n2", False)
    assert here.containers_only and away.containers_only
    assert (list(here.server_pids()), list(away.server_pids())) == ([10], [])
    runners = [TargetRunner(spec, "img", "auto", None, None, print) for spec in (here, away)]  # type: ignore[arg-type]
    # the client attaches the uprobes only where the gadget pod's programs are in this kernel
    assert [r.attach for r in runners] == ["auto", "ig"]
    assert all(r.collector.containers_only for r in runners)


def test_a_containers_only_target_counts_the_coverage_of_its_containers_processes_only():
    """The client probes every process of the host, but a gadget pod traces
    containers: the node's other processes are out of scope, not untraced."""
    from igdeadlock.analysis.collector import Collector
    from igdeadlock.ig.decoder import StreamDecoder
    from igdeadlock.records import ProcessEvent

    for containers_only, expected in ((True, (1, 1)), (False, (2, 2))):
        collector = Collector(containers_only=containers_only)
        collector.coverage.probed(1, 10, "kubelet", "/kubelet", "/libc.so.6", "glibc", False, "", mntns_id=500)
        collector.coverage.probed(2, 20, "cron", "/cron", None, None, False, "no pthread lock functions",
                                  mntns_id=500)
        collector.coverage.probed(3, 30, "app", "/app", "/app", "glibc", True, "", mntns_id=700)
        collector.coverage.probed(4, 40, "sh", "/bin/sh", None, None, False, "statically linked", mntns_id=700)
        collector.consume(ProcessEvent(3, 1, 30, 700, 0, 0, "app", "/app"))  # the gadget's: in scope
        assert collector.coverage_counts() == expected
        stats = collector.stats(StreamDecoder().counts())
        assert (stats["processes_traced"], stats["processes_untraced"]) == expected
