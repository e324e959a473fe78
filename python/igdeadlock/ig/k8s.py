"""kubectl-gadget deployments: find the gadget pods and reach their gadget service.

The gadget pods run in namespace ``gadget`` with label ``k8s-app=gadget``; each
serves the gadget service on 127.0.0.1:8080 inside the pod. igdeadlock lists
them and opens one port-forward per pod, both through the Kubernetes API via
kubectl, which also handles every kind of kubeconfig credential (igdeadlock
never reads or logs them). The least RBAC it needs, in the gadget namespace:
``pods: get, list`` (kubectl port-forward gets the pod first) and
``pods/portforward: create``.

A gadget pod is known by its node: when it goes (deleted, evicted, updated),
its DaemonSet makes another one there, under a new name, and the next
connection goes to that one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from igdeadlock.ig.service import Address

GADGET_NAMESPACE = "gadget"
GADGET_SELECTOR = "k8s-app=gadget"
GADGET_SERVICE_PORT = 8080
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> \d+")


class KubernetesError(RuntimeError):
    """The cluster could not be asked, or answered nothing usable."""


@dataclass(frozen=True)
class GadgetPod:
    name: str
    node: str
    ready: bool
    container_ids: Tuple[str, ...] = ()  # the runtime's ids of its running containers, without "runtime://"


def kubectl(context: Optional[str] = None) -> List[str]:
    tool = shutil.which("kubectl")
    if tool is None:
        raise KubernetesError("--k8s needs kubectl on PATH (https://kubernetes.io/docs/tasks/tools/)")
    return [tool] + (["--context", context] if context else [])


def parse_gadget_pods(listing: str) -> List[GadgetPod]:
    """Gadget pods from `kubectl get pods -o json` output."""
    try:
        items = json.loads(listing).get("items", [])
    except (ValueError, AttributeError) as exc:
        raise KubernetesError(f"kubectl gave no pod list: {exc}") from exc
    pods = []
    for item in items:
        metadata, spec, status = item.get("metadata", {}), item.get("spec", {}), item.get("status", {})
        containers = status.get("containerStatuses") or []
        # a pod being deleted may still say Running and ready for a while
        ready = (status.get("phase") == "Running" and not metadata.get("deletionTimestamp")
                 and all(c.get("ready") for c in containers))
        ids = tuple(c["containerID"].partition("://")[2] for c in containers
                    if "running" in (c.get("state") or {}) and "://" in (c.get("containerID") or ""))
        pods.append(GadgetPod(metadata.get("name", ""), spec.get("nodeName", ""), ready, ids))
    return sorted((p for p in pods if p.name), key=lambda p: (p.node, p.name))


def gadget_pods(context: Optional[str] = None, nodes: Sequence[str] = (),
                namespace: str = GADGET_NAMESPACE) -> List[GadgetPod]:
    command = kubectl(context) + ["get", "pods", "-n", namespace, "-l", GADGET_SELECTOR, "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise KubernetesError(f"listing gadget pods failed: {result.stderr.strip()}")
    pods = parse_gadget_pods(result.stdout)
    if nodes:
        pods = [p for p in pods if p.node in nodes]
    if not pods:
        where = f" on nodes {', '.join(nodes)}" if nodes else ""
        raise KubernetesError(f"no gadget pods (namespace {namespace}, label {GADGET_SELECTOR}){where}: "
                              "is Inspektor Gadget deployed (kubectl gadget deploy)?")
    return pods


def kube_manager_params(namespace: Optional[str], pod: Optional[str]) -> Dict[str, str]:
    """IG's KubeManager filters: which pods a gadget pod traces."""
    params: Dict[str, str] = {}
    if namespace:
        params["operator.KubeManager.namespace"] = namespace
    else:
        params["operator.KubeManager.all-namespaces"] = "true"
    if pod:
        params["operator.KubeManager.podname"] = pod
    return params


def _drain(stream) -> None:  # type: ignore[no-untyped-def]
    for _ in stream:
        pass


def pod_on_node(pods: Sequence[GadgetPod], node: str) -> Optional[GadgetPod]:
    """The gadget pod to use on a node: a ready one, else any (None: none there)."""
    here = [p for p in pods if p.node == node]
    return next((p for p in here if p.ready), here[0] if here else None)


class PortForward:
    """`kubectl port-forward` to the gadget pod of one node, restarted on demand.

    A reconnection first asks which gadget pod runs on the node now: one that
    was deleted is replaced by its DaemonSet under another name."""

    def __init__(self, pod: GadgetPod, context: Optional[str] = None,
                 namespace: str = GADGET_NAMESPACE) -> None:
        self.pod = pod
        self.context = context
        self.namespace = namespace
        self._process: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()
        self._connects = 0

    def current_pod(self) -> GadgetPod:
        """The node's gadget pod as the cluster lists it now (the known one when
        its node is unknown); KubernetesError when none is ready there."""
        if not self.pod.node:
            return self.pod
        pod = pod_on_node(gadget_pods(self.context, [self.pod.node], self.namespace), self.pod.node)
        if pod is None or not pod.ready:
            raise KubernetesError(f"no ready gadget pod on node {self.pod.node}"
                                  + (f" ({pod.name} is not ready)" if pod is not None else ""))
        return pod

    def connect(self, timeout: float = 30.0) -> Address:
        """(Re)start the forward; the local address of the pod's gadget service."""
        with self._lock:
            self._close_locked()
            if self._connects:
                self.pod = self.current_pod()
            self._connects += 1
            command = kubectl(self.context) + ["port-forward", "--address", "127.0.0.1", "-n", self.namespace,
                                               f"pod/{self.pod.name}", f":{GADGET_SERVICE_PORT}"]
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            self._process = process
            timer = threading.Timer(timeout, process.kill)
            timer.start()
            try:
                for line in process.stdout:  # type: ignore[union-attr]
                    match = _FORWARDING.search(line)
                    if match:
                        # kubectl goes on logging connections: keep its pipe from filling up
                        threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
                        return Address("tcp", f"127.0.0.1:{match.group(1)}")
            finally:
                timer.cancel()
            error = process.stderr.read().strip() if process.stderr else ""  # type: ignore[union-attr]
            raise KubernetesError(f"port-forward to {self.pod.name} failed: {error or 'no forwarding port'}")

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
