#!/bin/sh
# Run in a kernel-matrix guest (make test-k8s-kernel): a single-node cluster
# (tools/cluster/cluster.sh ig, its state in the guest's memory), then the
# tests of `kubectl gadget run` against it. The cluster's logs and the tests'
# output are left in the directory shared with the machine that booted it.
set -u
out=${IGDEADLOCK_GUEST_OUT:?run by tools/kernels/kvm.py}/files
mkdir -p "$out"
export IGDEADLOCK_CLUSTER_STATE=/run/cluster-state
# an emulated CPU: every wait of cluster.sh five times longer
export IGDEADLOCK_CLUSTER_SLOW=${IGDEADLOCK_CLUSTER_SLOW:-5}
# the guest boots with a unified cgroup hierarchy and no init to hand its
# controllers down: the kubelet's cgroups get them all
for controller in $(cat /sys/fs/cgroup/cgroup.controllers); do
	echo "+$controller" >/sys/fs/cgroup/cgroup.subtree_control
done
started=$(date +%s)
tools/cluster/cluster.sh ig
status=$?
echo "cluster: $status after $(($(date +%s) - started)) s" >"$out/summary"
if [ "$status" -eq 0 ]; then
	.venv/bin/pytest -q -s tests/k8s/test_cluster_kubectl_gadget.py --junitxml="$out/junit.xml"
	status=$?
	echo "tests: $status after $(($(date +%s) - started)) s" >>"$out/summary"
fi
cp /var/log/igdeadlock-cluster-*.log "$out/" 2>/dev/null
if [ "$status" -ne 0 ] && [ -x build/cluster/kubectl ]; then
	# why IG's gadget pod did not come up, if that is what failed
	kubectl="build/cluster/kubectl --kubeconfig build/cluster/kubeconfig"
	$kubectl -n gadget describe pods >"$out/gadget-pods.txt" 2>&1
	$kubectl -n gadget logs daemonset/gadget --all-containers --previous >"$out/gadget-previous.log" 2>&1
	$kubectl -n gadget logs daemonset/gadget --all-containers >"$out/gadget.log" 2>&1
fi
exit "$status"
