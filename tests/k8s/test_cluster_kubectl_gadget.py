"""`kubectl gadget run` of the igdeadlock image from the cluster's registry: the
gadget pod pulls it, runs it for the test namespace, and its records carry IG's
Kubernetes enrichment."""

from __future__ import annotations

import json
import signal
import subprocess
from contextlib import contextmanager
from typing import Iterator

from kube import CLUSTER_DIR, CONTAINER, GLIBC, record

from helpers import IGDEADLOCK, Lines, program_facts, wait_until_stuck
from igdeadlock.host.attach import kernel_has_kprobes


@contextmanager
def kubectl_gadget_run(cluster, image: str, namespace: str, tmp_path) -> Iterator[Lines]:
    """`kubectl gadget run IMAGE -n NAMESPACE -o json`, its stdout line by line;
    interrupted (as Ctrl-C would) when the block ends."""
    with (tmp_path / "kubectl-gadget.err").open("w") as stderr:
        run = subprocess.Popen([str(CLUSTER_DIR / "kubectl-gadget"), "run", image, "-n", namespace, "-o", "json"],
                               stdout=subprocess.PIPE, stderr=stderr, text=True, env=cluster.env)
    try:
        yield Lines(run.stdout)
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()


def test_kubectl_gadget_run_enriches_the_records_of_a_pod(cluster, gadget_image, namespace, start_pods, tmp_path):
    (pod,) = start_pods("abba", "worker", command=["/bin/sleep", "1000000"])
    with kubectl_gadget_run(cluster, gadget_image, namespace, tmp_path) as out:
        # the map iterators print an array at every fetch: the gadget runs on the node
        out.wait_for(lambda line: line.startswith("["), timeout=180)
        program = cluster.kubectl("exec", "-n", namespace, pod, "--", "/igd/abba")
        assert "thread ba" in program.stdout
        # the program's exit, from the dead_pids datasource (a tracepoint)
        exited = record(out.wait_for(lambda line: (record(line) or {}).get("comm") == "abba"
                                     and "exited" in (record(line) or {}), timeout=60))
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
        fetches = [line for line in lines if line.startswith("[")]
        assert fetches and all(fetched_edges(line) == [] for line in fetches)


def fetched(line: str, field: str) -> list:
    """The records of one fetch of an array datasource (a JSON array) that have ``field``, or []."""
    if not line.startswith("["):
        return []
    try:
        batch = json.loads(line)
    except ValueError:
        return []
    return [r for r in batch if isinstance(r, dict) and field in r] if isinstance(batch, list) else []


def fetched_edges(line: str) -> list:
    """The records of one fetch of the edges map, or []."""
    return fetched(line, "to_lock")


def test_kubectl_gadget_run_yields_the_waiting_threads_of_a_deadlocked_pod(
        cluster, gadget_image, namespace, start_pods, tmp_path):
    """The blocked-thread snapshot needs no uprobe: `kubectl gadget run` alone
    lists the threads of a pod that deadlocked before it started, each with the
    lock word it waits on and the pod it is in; `igdeadlock snapshot --k8s` on
    the node reads their owners and reports the deadlock with pod and container."""
    (pod,) = start_pods("deadlock", "hung")  # AB/BA behind a barrier: deadlocked at once
    (pid,) = cluster.pod_pids(namespace, pod)
    wait_until_stuck(pid, 3)
    facts = program_facts(cluster.kubectl("logs", "-n", namespace, pod).stdout)
    with kubectl_gadget_run(cluster, gadget_image, namespace, tmp_path) as out:
        line = out.wait_for(lambda line: bool(fetched(line, "futex")), timeout=180)
    waiting = {r["ns_tid"]: r for r in fetched(line, "futex")}
    t0, t1 = facts["t0"][0], facts["t1"][0]  # as the pod's pid namespace numbers them
    assert {t0, t1} <= set(waiting), waiting
    assert {waiting[t0]["futex"], waiting[t1]["futex"]} == {facts["L0"][0], facts["L1"][0]}
    for record_ in (waiting[t0], waiting[t1]):
        assert (record_["pid"], record_["k8s"]["namespace"], record_["k8s"]["podName"],
                record_["k8s"]["containerName"]) == (pid, namespace, pod, CONTAINER)
        assert record_["timed"] == 0 and record_["kernel_frame_count"] > 0
    result = subprocess.run([*IGDEADLOCK, "snapshot", "--k8s", "--namespace", namespace, "--image", gadget_image,
                             "--format", "json"], capture_output=True, text=True, env=cluster.env, timeout=300)
    assert result.returncode == 0, result.stderr
    (deadlock,) = [f for f in json.loads(result.stdout)["findings"] if f["kind"] == "actual-deadlock"]
    assert (deadlock["pid"], deadlock["namespace"], deadlock["pod"], deadlock["container"]) == \
        (pid, namespace, pod, CONTAINER)
    assert {int(m, 16) for m in deadlock["mutexes"]} == {facts["L0"][0], facts["L1"][0]}
    assert all(b["held_by"] for b in deadlock["blocked"])


def test_kubectl_gadget_run_yields_a_pods_lock_edges_exactly_where_ig_attaches_uprobes(
        cluster, gadget_image, namespace, start_pods, tmp_path):
    """What users of a kernel with kprobes get from `kubectl gadget run` alone: the
    gadget pod's ig attaches the uprobes to the container's libc (found through its
    ld.so.cache) and the edges map fills with the pod's lock order, enriched with
    its namespace and name. On a kernel without kprobes ig cannot place them, and
    no edge comes (`igdeadlock watch --k8s` places them instead)."""
    (pod,) = start_pods("churn", "inverter", image=GLIBC)  # an AB/BA every 100 ms, linked against glibc
    with kubectl_gadget_run(cluster, gadget_image, namespace, tmp_path) as out:
        if kernel_has_kprobes():
            line = out.wait_for(lambda line: any(r.get("comm") == "churn" for r in fetched_edges(line)),
                                timeout=300)
            edges = [r for r in fetched_edges(line) if r.get("comm") == "churn"]
        else:
            out.wait_count(lambda line: line.startswith("["), 5, timeout=300)  # five fetches, churn locking
            edges = [r for line in out.seen for r in fetched_edges(line)]
    if not kernel_has_kprobes():
        assert edges == [], edges
        return
    assert {(e["k8s"]["namespace"], e["k8s"]["podName"], e["k8s"]["containerName"]) for e in edges} == \
        {(namespace, pod, CONTAINER)}, edges
    assert all(e["runtime"]["containerImageName"].endswith("igdeadlock/glibc:1") for e in edges), edges
