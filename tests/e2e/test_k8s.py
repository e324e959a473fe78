"""--k8s mode as far as this machine allows: a stand-in kubectl (tests/fakes/kubectl) lists
"gadget pods" and port-forwards to them; behind them are real ig daemons."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import IGDEADLOCK, IMAGE, REPO, Lines, finding_of, require_root_and_ig
from igdeadlock.ig.k8s import kube_manager_params, parse_gadget_pods


@pytest.fixture
def fake_cluster(tmp_path):
    require_root_and_ig()
    from igdeadlock.ig.daemon import PrivateDaemon, find_ig

    daemons = [PrivateDaemon(find_ig(), log_path=str(tmp_path / f"{node}.log")) for node in ("node-a", "node-b")]
    pods = [{"name": f"gadget-{n}", "node": node, "socket": str(d.start()).replace("unix://", "")}
            for n, (node, d) in enumerate(zip(("node-a", "node-b"), daemons))]
    env = dict(os.environ)
    env["PATH"] = f"{REPO / 'tests' / 'fakes'}:{os.path.dirname(sys.executable)}:{env['PATH']}"
    env["PYTHONPATH"] = str(REPO / "python")
    env["FAKE_GADGET_PODS"] = json.dumps(pods)
    env["FAKE_KUBECTL_LOG"] = str(tmp_path / "kubectl.log")
    yield env, tmp_path / "kubectl.log"
    for daemon in daemons:
        daemon.stop()


def test_watch_k8s_reaches_every_gadget_pod_and_passes_the_filters(fake_cluster, program, tmp_path):
    env, log = fake_cluster
    out = tmp_path / "report.json"
    watch = subprocess.Popen([*IGDEADLOCK, "watch", "--k8s", "--namespace", "shop", "--image", IMAGE,
                              "--format", "json", "-o", str(out), "--status-interval", "0.5",
                              "--fetch-interval", "250"], stderr=subprocess.PIPE, text=True, env=env)
    lines = Lines(watch.stderr)
    try:
        lines.wait_for(lambda line: "2/2 targets connected" in line)
        subprocess.run([str(program("abba"))], capture_output=True, text=True, check=True)
        lines.wait_count(finding_of("abba-"), 2)  # a live finding from each "node"
        watch.send_signal(2)
        assert watch.wait(60) == 0
    finally:
        for process in (watch,):
            if process.poll() is None:
                process.kill()
    report = json.loads(out.read_text())
    assert sorted(t["node"] for t in report["targets"]) == ["node-a", "node-b"]
    (cluster,) = [c for c in report["clusters"] if any(o["comm"].startswith("abba") for o in c["occurrences"])]
    assert sorted(cluster["nodes"]) == ["node-a", "node-b"]
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert sent and all(p.get("operator.KubeManager.namespace") == "shop" for p in sent)
    assert all("operator.LocalManager.host" not in p for p in sent)


def test_gadget_pod_listing_and_filters():
    listing = json.dumps({"items": [
        {"metadata": {"name": "gadget-x"}, "spec": {"nodeName": "n2"}, "status": {"phase": "Running"}},
        {"metadata": {"name": "gadget-y"}, "spec": {"nodeName": "n1"},
         "status": {"phase": "Pending", "containerStatuses": [{"ready": False}]}},
    ]})
    pods = parse_gadget_pods(listing)
    assert [(p.name, p.node, p.ready) for p in pods] == [("gadget-y", "n1", False), ("gadget-x", "n2", True)]
    assert kube_manager_params(None, None) == {"operator.KubeManager.all-namespaces": "true"}
    assert kube_manager_params("shop", "cart-1") == {"operator.KubeManager.namespace": "shop",
                                                     "operator.KubeManager.podname": "cart-1"}


def test_snapshot_k8s_of_gadget_pods_elsewhere_reads_what_the_kernel_tells(fake_cluster, program):
    """Gadget pods whose processes are not on this host: IG's own snapshots (at
    the interval the client sets) are all there is, the kernel's view alone. A
    hang is seen; no glibc owner is known, so no lock cycle is guessed."""
    from helpers import wait_until_stuck

    env, log = fake_cluster
    hung = subprocess.Popen([str(program("deadlock")), "abba"], stdout=subprocess.DEVNULL)
    try:
        wait_until_stuck(hung.pid, 3)
        result = subprocess.run([*IGDEADLOCK, "snapshot", "--k8s", "--image", IMAGE, "--format", "json",
                                 "--hang-time", "0.5", "--interval", "0.5"],
                                capture_output=True, text=True, env=env, timeout=120)
    finally:
        hung.kill()
        hung.wait()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    hangs = [f for f in report["findings"] if f["kind"] == "all-threads-blocked" and f["pid"] == hung.pid]
    assert len(hangs) == 2  # one from each "node"'s daemon: both see this host's process
    for hang in hangs:
        assert {b["wait_kind"] for b in hang["blocked"]} == {"futex"}
        assert all(not b["held_by"] for b in hang["blocked"])
    assert [f for f in report["findings"] if f["kind"] == "actual-deadlock"] == []
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert all("waiting:fetch-interval=500ms" in p.get("operator.oci.annotate", "") for p in sent)
