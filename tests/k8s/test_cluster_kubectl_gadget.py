"""`kubectl gadget run` of the igdeadlock image from the cluster's registry: the
gadget pod pulls it, runs it for the test namespace, and its records carry IG's
Kubernetes enrichment."""

from __future__ import annotations

import json
import signal
import subprocess

from kube import CLUSTER_DIR, CONTAINER, record

from helpers import Lines
from igdeadlock.host.attach import kernel_has_kprobes


def test_kubectl_gadget_run_enriches_the_records_of_a_pod(cluster, gadget_image, namespace, start_pods, tmp_path):
    (pod,) = start_pods("abba", "worker", command=["/bin/sleep", "1000000"])
    errors = tmp_path / "kubectl-gadget.err"
    with errors.open("w") as stderr:
        run = subprocess.Popen([str(CLUSTER_DIR / "kubectl-gadget"), "run", gadget_image, "-n", namespace,
                                "-o", "json"], stdout=subprocess.PIPE, stderr=stderr, text=True, env=cluster.env)
    out = Lines(run.stdout)
    try:
        # the map iterators print an array at every fetch: the gadget runs on the node
        out.wait_for(lambda line: line.startswith("["), timeout=180)
        program = cluster.kubectl("exec", "-n", namespace, pod, "--", "/igd/abba")
        assert "thread ba" in program.stdout
        # the program's exit, from the dead_pids datasource (a tracepoint)
        exited = record(out.wait_for(lambda line: (record(line) or {}).get("comm") == "abba"
                                     and "exited" in (record(line) or {}), timeout=60))
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
    assert exited is not None
    node = cluster.node()
    assert exited["k8s"]["namespace"] == namespace, exited
    assert (exited["k8s"]["podName"], exited["k8s"]["containerName"], exited["k8s"]["node"]) == \
        (pod, CONTAINER, node)
    assert exited["runtime"]["containerImageName"].endswith("igdeadlock/busybox:1")
    # its exec, from the processes datasource, is enriched the same way
    lines = out.text(timeout=5).splitlines()
    (started,) = [r for r in map(record, lines) if r and r.get("exe") == "/igd/abba"]
    assert (started["pid"], started["k8s"]["podName"], started["k8s"]["namespace"]) == \
        (exited["pid"], pod, namespace)
    if not kernel_has_kprobes():
        # ig cannot place the gadget's uprobes on a kernel without kprobes: no
        # lock edge, stack or lock record ever comes (igdeadlock watch --k8s
        # attaches them itself on the gadget pod's node, see test_cluster_watch.py)
        fetches = [json.loads(line) for line in lines if line.startswith("[")]
        assert fetches and all(batch == [] for batch in fetches)
