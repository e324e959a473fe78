"""Fixtures of tests/k8s: the real cluster of `make cluster`.

The gadget image is tagged for the cluster's registry and pushed there; test
programs are linked statically and reach the pods read-only through a hostPath
volume (the cluster has one node: this host), in the cluster's static busybox
image. Each test gets a namespace of its own, deleted afterwards. Nothing here
sleeps to synchronize: it waits on kubectl (wait, rollout status) and on what
the tools print.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Sequence

import pytest
from kube import BUSYBOX, CLUSTER_DIR, GADGET_NAMESPACE, REGISTRY, STATIC, WAIT, Cluster, K8sWatch, pod_manifest

from helpers import IMAGE, compile_program, require_root_and_ig


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    require_root_and_ig()
    kubeconfig = CLUSTER_DIR / "kubeconfig"
    if not kubeconfig.exists() or not (CLUSTER_DIR / "kubectl-gadget").exists():
        pytest.fail(f"no cluster ({kubeconfig}): run `make cluster` (or `make test-k8s`)")
    admin = Cluster(kubeconfig)
    ready = admin.kubectl("get", "--raw", "/readyz", check=False, timeout=30)
    if ready.returncode != 0:
        pytest.fail(f"the cluster does not answer ({ready.stderr.strip()}): run `make cluster`")
    admin.wait_gadget_ready()
    return admin


@pytest.fixture(scope="session")
def gadget_image(cluster: Cluster) -> str:
    """The gadget image built here (make gadget), tagged by its digest for the
    cluster's registry and pushed there: the gadget pods pull each build once."""
    ig = shutil.which("ig") or "/usr/local/bin/ig"
    repository, _, tag = IMAGE.rpartition(":")
    listing = subprocess.run([ig, "image", "list", "--no-trunc"], capture_output=True, text=True, check=True)
    digests = [line.split()[2] for line in listing.stdout.splitlines()[1:]
               if line.split()[:2] == [repository, tag] and len(line.split()) > 2]
    assert digests, f"{IMAGE} is not built: run `make gadget`\n{listing.stdout}"
    image = f"{REGISTRY}/igdeadlock:{digests[0].partition(':')[2][:16]}"
    for command in ([ig, "image", "tag", IMAGE, image],
                    [ig, "image", "push", "--insecure-registries", REGISTRY, image]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{' '.join(command)}: {result.stdout}{result.stderr}"
    return image


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own; deleted with its pods at the end."""
    words = "-".join(request.node.name.split("_")[1:4])[:30].strip("-")
    name = f"igdl-{words}-{uuid.uuid4().hex[:6]}".lower()
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=true", f"--timeout={WAIT}", check=False)


@pytest.fixture
def start_pods(cluster: Cluster, namespace: str) -> Callable[..., List[str]]:
    """start_pods(PROGRAM, NAME, ..., command=(), image=BUSYBOX): pods running
    tests/programs/PROGRAM.c (or COMMAND, with the program at /igd/PROGRAM), once
    they are ready; linked statically for busybox, against glibc otherwise."""

    def start(program: str, *names: str, command: Sequence[str] = (), image: str = BUSYBOX) -> List[str]:
        binary = compile_program(program, STATIC if image == BUSYBOX else STATIC[:-1])
        cluster.apply(*(pod_manifest(namespace, name, binary, command, image) for name in names))
        cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"--timeout={WAIT}",
                        *(f"pod/{name}" for name in names))
        return list(names)

    return start


@pytest.fixture
def restricted(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Cluster]:
    """The cluster as a ServiceAccount with only the RBAC igdeadlock's --k8s
    documents (python/igdeadlock/ig/k8s.py): in the gadget namespace, pods get
    and list, pods/portforward create. Its Role and RoleBinding go at the end."""
    account = "igdeadlock-watch"
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": namespace, "namespace": GADGET_NAMESPACE},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                      {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": namespace, "namespace": GADGET_NAMESPACE},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": namespace},
               "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]}
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": account, "namespace": namespace}}, role, binding)
    try:
        token = cluster.kubectl("create", "token", "-n", namespace, account, "--duration=1h").stdout.strip()
        kubeconfig = tmp_path / "kubeconfig"
        shutil.copy(CLUSTER_DIR / "kubeconfig", kubeconfig)
        limited = Cluster(kubeconfig)
        limited.kubectl("config", "set-credentials", account, f"--token={token}")
        context = limited.kubectl("config", "current-context").stdout.strip()
        limited.kubectl("config", "set-context", context, f"--user={account}")
        yield limited
    finally:
        cluster.kubectl("delete", "-n", GADGET_NAMESPACE, "rolebinding,role", namespace, "--ignore-not-found",
                        check=False)


@pytest.fixture
def watch_k8s(gadget_image: str, tmp_path: Path) -> Iterator[Callable[..., K8sWatch]]:
    """watch_k8s(CLUSTER, ARG...): a running K8sWatch, connected; killed at the end if still running."""
    started: List[K8sWatch] = []

    def start(cluster: Cluster, *extra: str) -> K8sWatch:
        watch = K8sWatch(cluster, gadget_image, tmp_path / f"report-{len(started)}.json", *extra)
        started.append(watch)
        watch.wait_connected()
        return watch

    yield start
    for watch in started:
        watch.kill()
