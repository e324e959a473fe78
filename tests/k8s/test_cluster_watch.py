"""`igdeadlock watch --k8s` on the real cluster: it lists the gadget pods and
port-forwards to them with kubectl, runs the gadget from the cluster's registry,
and, this host being the gadget pod's node, attaches the gadget's uprobes
itself where ig cannot (no kprobes). The workload is tests/programs/churn.c: a
fresh pair of threads takes A then B and B then A every 100 ms."""

from __future__ import annotations

from kube import CONTAINER, GADGET_NAMESPACE, by_pid, churn_clusters, occurrence_places

from helpers import unsuppressed
from igdeadlock.host.attach import kernel_has_kprobes


def test_watch_reports_a_pods_inversion_with_namespace_pod_and_container(
        cluster, namespace, start_pods, restricted, watch_k8s):
    (pod,) = start_pods("churn", "shop")
    node = cluster.node()
    # as a ServiceAccount with no more than the documented RBAC
    denied = restricted.kubectl("auth", "can-i", "list", "pods", "-n", "default", check=False)
    assert denied.stdout.strip() == "no"
    watch = watch_k8s(restricted, "--namespace", namespace)
    (pid,) = watch.wait_findings("churn")
    report, said = watch.stop()
    assert f"lock-order inversion (potential deadlock) (pid={pid}, churn)" in said
    if not kernel_has_kprobes():
        assert "igdeadlock attaches them itself" in said  # to the gadget pod's programs, on this node
    (finding,) = [f for f in unsuppressed(report) if f["comm"] == "churn"]
    assert finding["kind"] == "potential-deadlock"
    assert (finding["node"], finding["namespace"], finding["pod"], finding["container"]) == \
        (node, namespace, pod, CONTAINER)
    assert len(finding["container_id"]) == 64
    (cluster_finding,) = churn_clusters(report)
    assert occurrence_places(cluster_finding) == [(node, namespace, pod, CONTAINER)]
    assert cluster_finding["pods"] == [f"{namespace}/{pod}"]
    # the program is traced on the C library linked into it; the coverage lists
    # the watched pods' processes only, not the node's others
    churn = by_pid(report)[finding["pid"]]
    assert (churn["traced"], churn["static"], churn["library"], churn["flavor"]) == (True, True, "/igd/churn",
                                                                                     "glibc")
    assert {p["mntns_id"] for p in report["processes"]} == {finding["mntns_id"]}
    (target,) = report["targets"]
    assert (target["node"], target["state"], target["connects"]) == (node, "stopped", 1)


def test_two_pods_running_the_same_code_are_one_cluster_finding_with_two_occurrences(
        cluster, namespace, start_pods, watch_k8s):
    pods = start_pods("churn", "twin-a", "twin-b")
    node = cluster.node()
    watch = watch_k8s(cluster, "--namespace", namespace)
    watch.wait_findings("churn", 2)
    report, _ = watch.stop()
    findings = [f for f in unsuppressed(report) if f["comm"] == "churn"]
    assert sorted(f["pod"] for f in findings) == pods
    assert len({f["signature"] for f in findings}) == 1  # the same acquisition sites
    (cluster_finding,) = churn_clusters(report)
    assert occurrence_places(cluster_finding) == [(node, namespace, pod, CONTAINER) for pod in pods]
    assert cluster_finding["pods"] == [f"{namespace}/{pod}" for pod in pods]
    assert cluster_finding["nodes"] == [node]


def test_a_deleted_gadget_pod_is_lost_and_the_watch_recovers_on_its_replacement(
        cluster, namespace, start_pods, watch_k8s):
    (before,) = start_pods("churn", "before")
    node = cluster.node()
    (old,) = [p["metadata"]["name"] for p in cluster.gadget_pods()]
    watch = watch_k8s(cluster, "--namespace", namespace)
    try:
        (first,) = watch.wait_findings("churn")
        cluster.kubectl("delete", "pod", "-n", GADGET_NAMESPACE, "-l", "k8s-app=gadget", "--wait=false")
        watch.lines.wait_for(lambda line: f"{node} lost" in line, timeout=120)
        cluster.wait_gadget_ready()  # the DaemonSet's new pod
        (new,) = [p["metadata"]["name"] for p in cluster.gadget_pods()
                  if not p["metadata"].get("deletionTimestamp")]
        assert new != old
        watch.wait_connected()  # to the new pod, under its new name
        # a program started after the reconnection is found too
        (after,) = start_pods("churn", "after")
        assert watch.wait_findings("churn", 2)[0] == first
        report, _ = watch.stop()
    finally:
        cluster.wait_gadget_ready()
    (target,) = report["targets"]
    assert target["connects"] >= 2 and target["interrupted"] >= 1, target
    assert report["stats"]["streams_interrupted"] >= 1
    (cluster_finding,) = churn_clusters(report)
    # what the lost pod's run found is kept, beside what came after
    assert {o["pod"] for o in cluster_finding["occurrences"]} == {before, after}
