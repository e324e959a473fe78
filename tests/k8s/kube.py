"""The real cluster of `make cluster` (tools/cluster/cluster.sh) as tests/k8s use
it: kubectl as its admin or another user, test pods, `igdeadlock watch --k8s`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from helpers import IGDEADLOCK, REPO, Lines

# Pods and this host both reach the cluster's registry at this address.
REGISTRY = "10.244.0.1:5000"
BUSYBOX = f"{REGISTRY}/igdeadlock/busybox:1"  # the cluster's test image (static busybox)
GLIBC = f"{REGISTRY}/igdeadlock/glibc:1"  # Debian's minbase: glibc with its ld.so.cache
CLUSTER_DIR = REPO / "build" / "cluster"  # kubeconfig, kubectl, kubectl-gadget
GADGET_NAMESPACE = "gadget"
STATIC = ("-O0", "-g", "-fno-omit-frame-pointer", "-static")
CONTAINER = "app"  # the container name of every test pod
WAIT = "180s"  # kubectl's waits: a pull from the local registry, a DaemonSet's new pod


class Cluster:
    """kubectl and kubectl-gadget on the cluster, as its admin (or another kubeconfig)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.env = dict(os.environ)
        self.env["KUBECONFIG"] = str(kubeconfig)
        # the cluster's own kubectl first: igdeadlock and kubectl-gadget run `kubectl`
        self.env["PATH"] = f"{CLUSTER_DIR}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}" + \
            self.env.get("PATH", "")

    def kubectl(self, *args: str, stdin: Optional[str] = None, check: bool = True,
                timeout: float = 240) -> subprocess.CompletedProcess:
        result = subprocess.run([str(CLUSTER_DIR / "kubectl"), *args], input=stdin, capture_output=True,
                                text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stderr.strip()}")
        return result

    def apply(self, *objects: dict) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                           "items": list(objects)}))

    def gadget_pods(self) -> List[dict]:
        listing = self.kubectl("get", "pods", "-n", GADGET_NAMESPACE, "-l", "k8s-app=gadget", "-o", "json")
        return json.loads(listing.stdout)["items"]

    def wait_gadget_ready(self) -> None:
        """Until the gadget DaemonSet has its pod on every node, ready."""
        self.kubectl("rollout", "status", "-n", GADGET_NAMESPACE, "daemonset/gadget", f"--timeout={WAIT}")

    def pod_pids(self, namespace: str, pod: str) -> List[int]:
        """The processes of a pod's containers, on this host (the cluster's one node)."""
        from igdeadlock.host.procfs import container_pids

        status = json.loads(self.kubectl("get", "pod", "-n", namespace, pod, "-o", "json").stdout)["status"]
        ids = [c["containerID"].rpartition("://")[2] for c in status.get("containerStatuses", [])]
        return container_pids(ids)

    def node(self) -> str:
        (name,) = self.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
        return name


def pod_manifest(namespace: str, name: str, program: Path, command: Sequence[str], image: str = BUSYBOX) -> dict:
    """A pod of `image` (busybox: for a static program) with the program at
    /igd/PROGRAM (read-only hostPath)."""
    inside = f"/igd/{program.name.rsplit('-', 1)[0]}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "igdeadlock-test"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": CONTAINER, "image": image, "command": list(command) or [inside],
                            "volumeMounts": [{"name": "program", "mountPath": inside, "readOnly": True}]}],
            "volumes": [{"name": "program", "hostPath": {"path": str(program), "type": "File"}}],
        },
    }


def record(line: str) -> Optional[dict]:
    """A JSON object printed on one line (kubectl gadget run -o json), or None."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class K8sWatch:
    """`igdeadlock watch --k8s --format json -o REPORT`, its stderr followed line by line."""

    def __init__(self, cluster: Cluster, image: str, report: Path, *extra: str) -> None:
        self.report = report
        self.process = subprocess.Popen(
            [*IGDEADLOCK, "watch", "--k8s", "--image", image, "--format", "json", "-o", str(report),
             "--status-interval", "0.5", "--fetch-interval", "250", "--duration", "900", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cluster.env)
        self.lines = Lines(self.process.stderr)

    def wait_connected(self, timeout: float = 180) -> str:
        """Until every gadget pod is connected (and the gadget live on it)."""
        def connected(line: str) -> bool:
            words = line.split()
            if "targets" not in words or "connected," not in words:
                return False
            done, _, total = words[words.index("targets") - 1].partition("/")
            return done == total != "0"
        return self.lines.wait_for(connected, timeout)

    def wait_findings(self, comm: str, count: int = 1, timeout: float = 120) -> List[int]:
        """Until live findings of ``count`` processes named so were printed, since
        the start (one may come before the status line that says connected);
        their pids, in the order they came."""
        deadline = time.monotonic() + timeout
        while True:
            found = (live_finding(line, comm) for line in self.lines.seen)
            pids = list(dict.fromkeys(pid for pid in found if pid is not None))
            if len(pids) >= count:
                return pids
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(pids)} of {count} findings; saw:\n{''.join(self.lines.seen[-40:])}"
            try:
                self.lines.seen.append(self.lines.queue.get(timeout=min(0.5, remaining)))
            except queue.Empty:
                continue

    def stop(self) -> Tuple[dict, str]:
        """Ctrl-C; the report and everything it said."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(120)
        said = self.lines.text()
        assert code == 0, f"igdeadlock watch exited with {code}:\n{said[-4000:]}"
        return json.loads(self.report.read_text()), said

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def live_finding(line: str, comm: str) -> Optional[int]:
    """The pid of a live finding's first line about a process named so, or None."""
    marker = "(pid="
    if marker not in line or f", {comm})" not in line:
        return None
    return int(line.split(marker, 1)[1].split(",", 1)[0])


def churn_clusters(report: dict) -> List[dict]:
    return [c for c in report["clusters"] if c["kind"] == "potential-deadlock"
            and any(o["comm"] == "churn" for o in c["occurrences"])]


def occurrence_places(cluster_finding: dict) -> List[Tuple[str, str, str, str]]:
    return sorted((o["node"], o["namespace"], o["pod"], o["container"]) for o in cluster_finding["occurrences"])


def by_pid(report: dict) -> Dict[int, dict]:
    return {p["pid"]: p for p in report["processes"]}
