#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for trying the gadget
# the way users run it (kubectl gadget, gadget pods).
#
#   tools/cluster/cluster.sh up       bring the cluster up (idempotent), wait until
#                                     the node is Ready and a test pod Running
#   tools/cluster/cluster.sh ig       up, then Inspektor Gadget deployed with `kubectl
#                                     gadget deploy` (built here), and a check that
#                                     `kubectl gadget run` runs a gadget image from
#                                     the cluster's registry
#   tools/cluster/cluster.sh down     stop everything `up` started, and the pods
#   tools/cluster/cluster.sh status   say what runs
#
# What runs (each with a pid file under $run, its log in $log_prefix-NAME.log):
#   registry    Debian's docker-registry on 127.0.0.1:5000 (pods reach it as
#               $gateway:5000); nothing can be pulled from elsewhere
#   containerd  an instance of its own: its own config, root, state and socket
#               (see start_containerd for why not the standard one)
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#   kube-proxy  built from Go modules by build.sh (cached)
#
# The node's address is the pods' bridge gateway ($gateway on $bridge), which
# this script creates: nothing depends on the machine's own network. The
# kubeconfig for kubectl is build/cluster/kubeconfig in the repository.
# No image is pulled from outside: the pod sandbox ("pause", pause.c here) and
# the test images (static busybox; Debian's minbase, for programs linked against
# glibc) are made here and imported or pushed.
#
# Using it:
#   export KUBECONFIG=$PWD/build/cluster/kubeconfig PATH=$PWD/build/cluster:$PATH
#   kubectl get pods -A                  (build/cluster/kubectl is the cluster's own)
#   ig image build -t 10.244.0.1:5000/NAME .   (a gadget image the gadget pods can pull)
#   ig image push --insecure-registries 10.244.0.1:5000 10.244.0.1:5000/NAME
#   kubectl gadget run 10.244.0.1:5000/NAME    (build/cluster/kubectl-gadget)
set -euo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${IGDEADLOCK_CLUSTER_STATE:-/var/lib/igdeadlock-cluster}
run=/run/igdeadlock-cluster
log_prefix=/var/log/igdeadlock-cluster
kubeconfig_out=$repo/build/cluster/kubeconfig
# Every wait is this many times longer: a node on an emulated CPU (a kernel
# matrix guest, tools/kernels) starts its components minutes, not seconds, late.
slow=${IGDEADLOCK_CLUSTER_SLOW:-1}

node=igdeadlock
bridge=igdcni0
gateway=10.244.0.1
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/24
service_ip=10.96.0.1
apiserver_url=https://$gateway:6443
registry=127.0.0.1:5000
pod_registry=$gateway:5000
containerd_sock=$run/containerd/containerd.sock
pause_image=igdeadlock.local/pause:1
test_image=$registry/igdeadlock/busybox:1
# For programs linked against glibc: Debian's minbase root of tools/containers
# (ig finds a container's libc through its ld.so.cache, which static busybox lacks).
glibc_image=$registry/igdeadlock/glibc:1
glibc_rootfs=${IGDEADLOCK_CACHE:-/var/cache/igdeadlock}/containers/debian-bookworm-minbase-$(dpkg --print-architecture).tar.gz
pki=$state/pki
# Bump when the certificates' recipe changes: they are made again.
pki_recipe=1

say() { echo "cluster: $*"; }
fail() {
	echo "cluster: $*" >&2
	exit 1
}

# --- processes ------------------------------------------------------------------

pidfile() { echo "$run/$1.pid"; }

# running NAME: the PID of the NAME this script started, if it still runs (the
# pid file names it, and /proc says it is the same program).
running() {
	local pid exe
	pid=$(cat "$(pidfile "$1")" 2>/dev/null) || return 1
	[ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
	exe=$(cat "$run/$1.exe" 2>/dev/null) || return 1
	[ "$(readlink "/proc/$pid/exe")" = "$exe" ] || return 1
	echo "$pid"
}

# start NAME PROGRAM ARG...: starts PROGRAM in its own session unless NAME runs.
start() {
	local name=$1 program=$2
	shift 2
	if running "$name" >/dev/null; then
		[ "$(cat "$run/$name.exe")" != "$(readlink -f "$program")" ] || return 0
		say "$name runs an older build"
		stop "$name"
	fi
	local log=$log_prefix-$name.log
	echo "=== $(date -Is) $0 up" >>"$log"
	setsid "$program" "$@" </dev/null >>"$log" 2>&1 &
	echo $! >"$(pidfile "$name")"
	readlink -f "$program" >"$run/$name.exe"
	say "started $name (PID $!, log: $log)"
}

# stop NAME: stops the NAME this script started (TERM, then KILL after 20 s).
stop() {
	local name=$1 pid
	if ! pid=$(running "$name"); then
		rm -f "$(pidfile "$name")" "$run/$name.exe"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	local i
	for i in $(seq 1 40); do
		[ -d "/proc/$pid" ] || break
		sleep 0.5
	done
	if [ -d "/proc/$pid" ]; then
		kill -KILL "$pid" 2>/dev/null || true
		say "$name (PID $pid) did not stop within 20 s; killed"
	fi
	rm -f "$(pidfile "$name")" "$run/$name.exe"
	say "stopped $name"
}

# write FILE < CONTENT: replaces FILE atomically, and only if CONTENT differs
# (daemons watch some of these files). Succeeds only if FILE changed.
write() {
	local file=$1
	mkdir -p "$(dirname "$file")"
	cat >"$file.new"
	if cmp -s "$file.new" "$file"; then
		rm -f "$file.new"
		return 1
	fi
	mv "$file.new" "$file"
}

# configure NAME FILE < CONTENT: writes NAME's config FILE; if NAME runs with
# an older one, stops it so that it starts again with this one.
configure() {
	if write "$2" && running "$1" >/dev/null; then
		say "the configuration of $1 changed"
		stop "$1"
	fi
}

# wait_for WHAT SECONDS COMMAND...: runs COMMAND until it succeeds.
wait_for() {
	local what=$1 seconds=$(($2 * slow)) deadline
	shift 2
	deadline=$(($(date +%s) + seconds))
	until "$@" >/dev/null 2>&1; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			fail "$what not ready after ${seconds}s (logs: $log_prefix-*.log)"
		fi
		sleep 1
	done
}

# --- the machine ---------------------------------------------------------------

prepare_host() {
	"$here/../setup-packages.sh" cluster
	# A freshly booted machine may lack these mounts; IG's gadget pods mount
	# debugfs/tracefs and bpffs from the host.
	mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
	if [ ! -e /sys/kernel/tracing/trace ] && [ ! -e /sys/kernel/debug/tracing/trace ]; then
		mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null ||
			mount -t tracefs tracefs /sys/kernel/debug/tracing
	fi
	# cgroup v1 controllers the kubelet needs (the machines boot with them,
	# but a missing one is mounted rather than reported later by the kubelet).
	# On a unified (v2) hierarchy nothing is mounted: a v1 hierarchy would take
	# its controller away from the kubelet's cgroups (a kernel-matrix guest
	# boots with v2).
	mountpoint -q /sys/fs/cgroup || fail "/sys/fs/cgroup is not mounted"
	local c
	[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] ||
	for c in cpu cpuacct cpuset memory devices freezer pids blkio; do
		if ! mountpoint -q "/sys/fs/cgroup/$c" && grep -qw "^$c" /proc/cgroups; then
			mkdir -p "/sys/fs/cgroup/$c"
			mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
		fi
	done
	[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true

	mkdir -p "$state" "$run" "$(dirname "$log_prefix")"
}

# The pods' bridge, made before the CNI plugin would: the API server and the
# kubelet listen on its address.
setup_network() {
	if ! ip link show "$bridge" >/dev/null 2>&1; then
		ip link add "$bridge" type bridge
	fi
	# (Tests on captured output: with pipefail, `ip ... | grep -q` can fail
	# when grep exits first.)
	[[ "$(ip -4 -o addr show dev "$bridge")" == *" $gateway/"* ]] || ip addr add "$gateway/24" dev "$bridge"
	ip link set "$bridge" up
	sysctl -q -w net.ipv4.ip_forward=1
	[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || sysctl -q -w net.bridge.bridge-nf-call-iptables=1
	# The registry listens on the host's loopback only; pods (and the host)
	# reach it as $pod_registry too, so that one image name works everywhere.
	sysctl -q -w "net.ipv4.conf.$bridge.route_localnet=1"
	iptables -t nat -N IGDEADLOCK-CLUSTER 2>/dev/null || true
	local hook
	for hook in PREROUTING OUTPUT; do
		iptables -t nat -C "$hook" -j IGDEADLOCK-CLUSTER 2>/dev/null || iptables -t nat -A "$hook" -j IGDEADLOCK-CLUSTER
	done
	iptables -t nat -F IGDEADLOCK-CLUSTER
	iptables -t nat -A IGDEADLOCK-CLUSTER -d "$gateway" -p tcp --dport "${pod_registry#*:}" \
		-j DNAT --to-destination "$registry"
}

teardown_network() {
	if iptables -t nat -L IGDEADLOCK-CLUSTER >/dev/null 2>&1; then
		iptables -t nat -D PREROUTING -j IGDEADLOCK-CLUSTER 2>/dev/null || true
		iptables -t nat -D OUTPUT -j IGDEADLOCK-CLUSTER 2>/dev/null || true
		iptables -t nat -F IGDEADLOCK-CLUSTER
		iptables -t nat -X IGDEADLOCK-CLUSTER
	fi
	! ip link show "$bridge" >/dev/null 2>&1 || ip link del "$bridge"
	# The kubelet's own chains (kube-proxy --cleanup removes kube-proxy's).
	local tool table chain hook
	for tool in iptables ip6tables; do
		command -v "$tool" >/dev/null || continue
		for table in filter nat mangle; do
			for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
				"$tool" -t "$table" -S "$chain" >/dev/null 2>&1 || continue
				for hook in INPUT OUTPUT FORWARD PREROUTING POSTROUTING; do
					while "$tool" -t "$table" -D "$hook" -j "$chain" 2>/dev/null; do :; done
				done
				"$tool" -t "$table" -F "$chain"
				"$tool" -t "$table" -X "$chain"
			done
		done
	done
}

# --- certificates and kubeconfigs ----------------------------------------------

# issue NAME SUBJECT EXTENSIONS: a key and a certificate signed by the cluster's CA.
issue() {
	local name=$1 subject=$2 ext=$3
	openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subject" 2>/dev/null
	printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' "$ext" >"$pki/$name.ext"
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
		-days 3650 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
	rm -f "$pki/$name.csr" "$pki/$name.ext"
	chmod 0600 "$pki/$name.key"
}

make_pki() {
	local stamp="$pki_recipe $node $gateway $service_ip"
	if [ "$(cat "$pki/.stamp" 2>/dev/null)" = "$stamp" ]; then
		return 0
	fi
	say "making the cluster's certificates (openssl)"
	rm -rf "$pki"
	mkdir -p "$pki"
	chmod 0700 "$pki"
	openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$pki/ca.key" -out "$pki/ca.crt" -days 3650 -subj "/CN=igdeadlock-cluster-ca" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
	local server=extendedKeyUsage=serverAuth client=extendedKeyUsage=clientAuth
	issue apiserver "/CN=kube-apiserver" "$server
subjectAltName=IP:$gateway,IP:$service_ip,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
	issue admin "/O=system:masters/CN=igdeadlock-admin" "$client"
	issue controller-manager "/CN=system:kube-controller-manager" "$client"
	issue scheduler "/CN=system:kube-scheduler" "$client"
	issue kube-proxy "/CN=system:kube-proxy" "$client"
	issue kubelet-client "/O=system:nodes/CN=system:node:$node" "$client"
	issue kubelet "/CN=$node" "$server
subjectAltName=DNS:$node,IP:$gateway,IP:127.0.0.1"
	# Service account tokens are signed with this key pair.
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
	openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
	chmod 0600 "$pki/sa.key"
	echo "$stamp" >"$pki/.stamp"
}

# kubeconfig FILE CERT-NAME: a kubeconfig with a client certificate.
kubeconfig() {
	local file=$1 name=$2
	mkdir -p "$(dirname "$file")"
	cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: igdeadlock
  cluster:
    server: $apiserver_url
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$pki/$name.crt")
    client-key-data: $(base64 -w0 "$pki/$name.key")
contexts:
- name: igdeadlock
  context:
    cluster: igdeadlock
    user: $name
current-context: igdeadlock
EOF
	chmod 0600 "$file.tmp"
	mv "$file.tmp" "$file"
}

make_kubeconfigs() {
	local n
	for n in controller-manager scheduler kube-proxy kubelet-client; do
		kubeconfig "$state/kubeconfig/$n" "$n"
	done
	kubeconfig "$kubeconfig_out" admin
}

# --- images --------------------------------------------------------------------

# image_archive ROOTFS NAME ENTRYPOINT-JSON OUT: a one-layer image in the
# format of `docker save`, which `ctr images import` reads. Reproducible: the
# same files give the same image.
image_archive() {
	local rootfs=$1 name=$2 entrypoint=$3 out=$4
	local dir
	dir=$(mktemp -d "$run/.image-XXXXXX")
	tar -C "$rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$dir/layer.tar" .
	local layer_sha config_sha
	layer_sha=$(sha256sum "$dir/layer.tar" | cut -d' ' -f1)
	mv "$dir/layer.tar" "$dir/$layer_sha.tar"
	printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":%s,"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"igdeadlock tools/cluster"}]}' \
		"$(go env GOARCH 2>/dev/null || dpkg --print-architecture)" "$entrypoint" "$layer_sha" >"$dir/config.json"
	config_sha=$(sha256sum "$dir/config.json" | cut -d' ' -f1)
	mv "$dir/config.json" "$dir/$config_sha.json"
	printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s.tar"]}]' "$config_sha" "$name" "$layer_sha" >"$dir/manifest.json"
	tar -C "$dir" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$out" manifest.json "$config_sha.json" "$layer_sha.tar"
	rm -rf "$dir"
}

ctr_() { ctr --address "$containerd_sock" --namespace k8s.io "$@"; }

# import_image NAME ARCHIVE: imports ARCHIVE unless NAME already has its config.
import_image() {
	local name=$1 archive=$2 want have
	want=$(tar -xOf "$archive" manifest.json | sed -n 's/.*"Config":"\([0-9a-f]*\)\.json".*/\1/p')
	have=$(ctr_ images ls name=="$name" 2>/dev/null | awk 'NR == 2 { print $3 }')
	# The listed digest is the manifest's; the config is checked through it.
	if [ -n "$have" ] && [[ "$(ctr_ content get "$have" 2>/dev/null)" == *"sha256:$want"* ]]; then
		return 0
	fi
	ctr_ images import "$archive" >/dev/null
	say "imported $name"
}

build_images() {
	local dir=$run/images
	rm -rf "$dir"
	mkdir -p "$dir/pause/bin" "$dir/busybox/bin" "$dir/busybox/etc" "$dir/busybox/tmp"

	# pause: a static program, from pause.c.
	gcc -static -Os -s -o "$dir/pause/pause" "$here/pause.c"
	image_archive "$dir/pause" "$pause_image" '["/pause"]' "$dir/pause.tar"
	import_image "$pause_image" "$dir/pause.tar"

	# The test workload: Debian's static busybox, pushed to the local registry
	# and pulled back from it by the test pod.
	ldd /bin/busybox >/dev/null 2>&1 && fail "/bin/busybox is not static (install busybox-static)"
	install -m 0755 /bin/busybox "$dir/busybox/bin/busybox"
	local applet
	for applet in sh ls cat echo sleep ps id hostname wget mount; do
		ln -s busybox "$dir/busybox/bin/$applet"
	done
	printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$dir/busybox/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/busybox/etc/group"
	chmod 1777 "$dir/busybox/tmp"
	image_archive "$dir/busybox" "$test_image" '["/bin/sh"]' "$dir/busybox.tar"
	import_image "$test_image" "$dir/busybox.tar"
	ctr_ images push --plain-http "$test_image" >/dev/null

	# glibc: the root filesystem the Docker tests' image is made of (made once,
	# with Docker, by build-images.sh).
	if [ ! -s "$glibc_rootfs" ]; then
		say "making Debian's minbase root filesystem (tools/containers/build-images.sh)"
		"$repo/tools/containers/docker.sh" start >/dev/null
		"$repo/tools/containers/build-images.sh" >/dev/null
	fi
	mkdir -p "$dir/glibc"
	tar -C "$dir/glibc" --numeric-owner -xzf "$glibc_rootfs"
	image_archive "$dir/glibc" "$glibc_image" '["/bin/bash"]' "$dir/glibc.tar"
	rm -rf "$dir/glibc"
	import_image "$glibc_image" "$dir/glibc.tar"
	ctr_ images push --plain-http "$glibc_image" >/dev/null
	rm -rf "$dir"
}

# --- the components --------------------------------------------------------------

start_registry() {
	mkdir -p "$state/registry" "$state/config"
	configure registry "$state/config/registry.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $state/registry
  delete:
    enabled: true
http:
  addr: $registry
EOF
	start registry /usr/bin/docker-registry serve "$state/config/registry.yml"
	wait_for "the registry" 30 curl -sf "http://$registry/v2/"
}

# containerd: an instance of our own, not the machine's standard one at
# /run/containerd/containerd.sock. Docker (tools/containers/docker.sh) runs on
# the same machine for the tests; dockerd 20.10 adopts a containerd it finds at
# the standard socket instead of starting its own, so taking that socket would
# tie the test suite's Docker to the cluster's lifetime (and `down` would pull
# containerd from under it). Nothing needs the standard path: the kubelet is
# told this socket, and Inspektor Gadget's gadget pods read the runtime socket
# path from their config (kubectl gadget deploy --containerd-socketpath; they
# see the host's /run under /host/run).
start_containerd() {
	mkdir -p "$state/containerd/certs.d" "$state/cni/net.d" "$state/cni/networks" "$run/containerd"
	local hosts
	for hosts in "$registry" "$pod_registry"; do
		mkdir -p "$state/containerd/certs.d/$hosts"
		write "$state/containerd/certs.d/$hosts/hosts.toml" <<EOF || true
server = "http://$registry"

[host."http://$registry"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
EOF
	done
	write "$state/cni/net.d/10-igdeadlock.conflist" <<EOF || true
{
  "cniVersion": "1.0.0",
  "name": "igdeadlock",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$state/cni/networks",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$gateway"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
	configure containerd "$state/config/containerd.toml" <<EOF
version = 2
root = "$state/containerd/root"
state = "$run/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$containerd_sock"

[ttrpc]
  address = "$containerd_sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$state/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE (the build machines' VM withholds it), so
  # no process may lower its OOM score below its parent's; without this the
  # kubelet's -998 for pod sandboxes fails every sandbox (runc: "failed to
  # update /proc/self/oom_score_adj: Permission denied").
  restrict_oom_score_adj = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc || echo /usr/sbin/runc)"
        Root = "$run/runc"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni/net.d"

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$state/containerd/certs.d"
EOF
	start containerd "$(command -v containerd)" --config "$state/config/containerd.toml"
	wait_for containerd 30 ctr --address "$containerd_sock" version
}

start_control_plane() {
	local bin=$1
	mkdir -p "$state/etcd"
	chmod 0700 "$state/etcd"
	start etcd "$bin/etcd" --name "$node" --data-dir "$state/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster "$node=http://127.0.0.1:2380" --log-level warn
	wait_for etcd 60 curl -sf http://127.0.0.1:2379/health

	start kube-apiserver "$bin/kube-apiserver" \
		--advertise-address "$gateway" --bind-address "$gateway" --secure-port 6443 \
		--etcd-servers http://127.0.0.1:2379 \
		--client-ca-file "$pki/ca.crt" \
		--tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
		--kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
		--kubelet-client-key "$pki/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority "$pki/ca.crt" \
		--kubelet-preferred-address-types InternalIP \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
		--service-cluster-ip-range "$service_cidr" \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--allow-privileged=true --profiling=false
	wait_for kube-apiserver 120 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
		"$apiserver_url/readyz"

	start kube-controller-manager "$bin/kube-controller-manager" \
		--kubeconfig "$state/kubeconfig/controller-manager" \
		--authentication-kubeconfig "$state/kubeconfig/controller-manager" \
		--authorization-kubeconfig "$state/kubeconfig/controller-manager" \
		--bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
		--cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
		--root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
		--service-cluster-ip-range "$service_cidr" --profiling=false
	start kube-scheduler "$bin/kube-scheduler" \
		--kubeconfig "$state/kubeconfig/scheduler" \
		--authentication-kubeconfig "$state/kubeconfig/scheduler" \
		--authorization-kubeconfig "$state/kubeconfig/scheduler" \
		--bind-address 127.0.0.1 --leader-elect=false --profiling=false
}

start_node() {
	local bin=$1
	mkdir -p "$state/kubelet"
	configure kubelet "$state/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $gateway
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# The build machines have cgroup v1 and no systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$containerd_sock
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $pki/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
# A small shared machine: evict only when it is really full, and never
# collect images (the locally made ones could not be pulled again).
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
serializeImagePulls: false
maxPods: 50
protectKernelDefaults: false
EOF
	start kubelet "$bin/kubelet" --config "$state/config/kubelet.yaml" \
		--kubeconfig "$state/kubeconfig/kubelet-client" \
		--root-dir "$state/kubelet" --cert-dir "$state/kubelet/pki" \
		--hostname-override "$node" --node-ip "$gateway"

	configure kube-proxy "$state/config/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $state/kubeconfig/kube-proxy
mode: iptables
clusterCIDR: $pod_cidr
hostnameOverride: $node
bindAddress: $gateway
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$gateway/32"]
conntrack:
  # 0: leave the machine's conntrack limits as they are
  maxPerCore: 0
EOF
	start kube-proxy "$bin/kube-proxy" --config "$state/config/kube-proxy.yaml"
}

kubectl_() { "$bin/kubectl" --kubeconfig "$kubeconfig_out" "$@"; }

node_ready() {
	[ "$(kubectl_ get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

pod_running() {
	[ "$(kubectl_ get pod igdeadlock-hello -o jsonpath='{.status.phase}' 2>/dev/null)" = Running ]
}

test_pod() {
	wait_for "the default service account" 60 kubectl_ get serviceaccount default
	kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: igdeadlock-hello
  namespace: default
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: hello
    image: $test_image
    imagePullPolicy: Always
    command: ["/bin/sh", "-c", "echo hello from the igdeadlock cluster; exec sleep 100000000"]
EOF
	wait_for "the test pod" 120 pod_running
}

# --- commands --------------------------------------------------------------------

up() {
	local t0
	t0=$(date +%s)
	prepare_host
	bin=$("$here/build.sh")
	make_pki
	make_kubeconfigs
	setup_network
	start_registry
	start_containerd
	build_images
	start_control_plane "$bin"
	start_node "$bin"
	wait_for "node $node Ready" 180 node_ready
	test_pod
	ln -sf "$bin/kubectl" "$repo/build/cluster/kubectl"
	say "up in $(($(date +%s) - t0))s: node $node Ready, pod igdeadlock-hello Running"
	say "kubectl: $repo/build/cluster/kubectl --kubeconfig $kubeconfig_out (or KUBECONFIG=$kubeconfig_out)"
}

# --- Inspektor Gadget on the cluster ------------------------------------------

# ig_up: IG's gadget pods deployed with `kubectl gadget deploy` (image built
# here, pushed to the cluster's registry), then a check that `kubectl gadget
# run` of a gadget image from that registry works (check-gadget/).
ig_up() {
	up
	local igbin tag image dir
	igbin=$("$here/ig/build.sh")
	tag=$(basename "$igbin")
	tag=${tag#ig-k8s-}
	image=$registry/inspektor-gadget:$tag
	ln -sf "$igbin/kubectl-gadget" "$repo/build/cluster/kubectl-gadget"

	# The gadget pods' image: IG's programs on an almost empty root (IG's own
	# image is distroless/static: users, CA certificates and /tmp).
	dir=$run/images
	rm -rf "$dir"
	mkdir -p "$dir/ig/bin" "$dir/ig/etc/ssl/certs" "$dir/ig/tmp"
	install -m 0755 "$igbin/gadgettracermanager" "$dir/ig/bin/gadgettracermanager"
	install -m 0755 "$igbin/cleanup" "$dir/ig/cleanup"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$dir/ig/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/ig/etc/group"
	[ ! -f /etc/ssl/certs/ca-certificates.crt ] ||
		install -m 0644 /etc/ssl/certs/ca-certificates.crt "$dir/ig/etc/ssl/certs/ca-certificates.crt"
	chmod 1777 "$dir/ig/tmp"
	image_archive "$dir/ig" "$image" '["/bin/gadgettracermanager"]' "$dir/ig.tar"
	import_image "$image" "$dir/ig.tar"
	ctr_ images push --plain-http "$image" >/dev/null
	rm -rf "$dir"

	# Unsigned images everywhere: the gadget pods' own and the gadgets they
	# pull from the cluster's registry (plain HTTP).
	write "$state/config/ig-daemon.yaml" <<EOF || true
operator:
  oci:
    verify-image: false
    insecure-registries:
    - $pod_registry
EOF
	local stamp current
	# IG's gadget pods run outside the host's pid namespace and read task
	# iterators (the gadget's blocked-thread snapshot) from it through a
	# transient systemd unit; a host without systemd gets pods in its pid
	# namespace instead, where IG reads them directly.
	local host_pid=false
	[ -S /run/systemd/private ] || host_pid=true
	stamp=$(cat "$state/config/ig-daemon.yaml" <(echo "$image $containerd_sock $host_pid") | sha256sum | cut -c1-16)
	current=$(kubectl_ -n gadget get daemonset gadget -o jsonpath='{.metadata.annotations.igdeadlock-deployed}' 2>/dev/null || true)
	if [ "$current" = "$stamp" ]; then
		say "Inspektor Gadget is deployed ($image)"
	else
		say "deploying Inspektor Gadget ($image)"
		# A DaemonSet of an earlier deploy carries our edit below, which the
		# deploy's server-side apply would refuse to overwrite: start afresh.
		kubectl_ -n gadget delete daemonset gadget --ignore-not-found --wait=true >/dev/null
		kubectl_gadget deploy --image "$image" --image-pull-policy IfNotPresent \
			--verify-image=false --daemon-config "$state/config/ig-daemon.yaml" \
			--containerd-socketpath "$containerd_sock" --wait=false
		# Root here lacks CAP_SYS_RESOURCE (see start_containerd), so runc cannot
		# grant it: the gadget container, which asks for it (IG uses it to lift
		# the memlock limit, which kernels with BPF memory accounting ignore),
		# would fail with "unable to apply caps: operation not permitted".
		local caps index
		caps=$(kubectl_ -n gadget get daemonset gadget \
			-o jsonpath='{range .spec.template.spec.containers[0].securityContext.capabilities.add[*]}{@}{"\n"}{end}')
		index=$(grep -nx SYS_RESOURCE <<<"$caps" | cut -d: -f1 || true)
		local bounding
		bounding=$(awk '$1 == "CapBnd:" { print $2 }' /proc/self/status)
		if [ -n "$index" ] && (((0x$bounding >> 24 & 1) == 0)); then
			kubectl_ -n gadget patch daemonset gadget --type=json -p \
				"[{\"op\": \"remove\", \"path\": \"/spec/template/spec/containers/0/securityContext/capabilities/add/$((index - 1))\"}]" >/dev/null
			say "gadget pods: SYS_RESOURCE left out (this machine cannot grant it)"
		fi
		if [ "$host_pid" = true ]; then
			kubectl_ -n gadget patch daemonset gadget --type=merge \
				-p '{"spec": {"template": {"spec": {"hostPID": true}}}}' >/dev/null
			say "gadget pods: in the host's pid namespace (no systemd here to read task iterators through)"
		fi
		kubectl_ -n gadget annotate --overwrite daemonset gadget "igdeadlock-deployed=$stamp" >/dev/null
	fi
	say "waiting for the gadget pod"
	kubectl_ -n gadget rollout status daemonset/gadget --timeout=$((5 * slow))m
	ig_check
}

kubectl_gadget() {
	PATH="$repo/build/cluster:$PATH" KUBECONFIG="$kubeconfig_out" "$repo/build/cluster/kubectl-gadget" "$@"
}

# ig_check: builds check-gadget/ with `ig image build`, pushes it to the
# cluster's registry, runs it with `kubectl gadget run` for a few seconds while
# the test pod runs a program, and shows what it saw.
ig_check() {
	local ig=${IG:-$(command -v ig || echo /usr/local/bin/ig)}
	[ -x "$ig" ] || fail "ig is missing: run make setup-ig"
	local gadget=$pod_registry/igdeadlock/cluster-check:latest
	local out=$repo/build/cluster/check-gadget.out
	if ! { nice -n 19 "$ig" image build --local -t "$gadget" "$here/check-gadget" &&
		"$ig" image push --insecure-registries "$pod_registry" "$gadget"; } >"$out" 2>&1; then
		cat "$out" >&2
		fail "could not build and push $gadget"
	fi
	(
		sleep $((6 * slow))
		for _ in 1 2 3; do
			kubectl_ exec igdeadlock-hello -- /bin/hostname >/dev/null 2>&1 || true
			sleep 1
		done
	) &
	local poker=$!
	say "kubectl gadget run $gadget --timeout $((12 * slow))"
	if ! kubectl_gadget run "$gadget" --pull always --timeout $((12 * slow)) >"$out" 2>&1; then
		wait "$poker" || true
		cat "$out" >&2
		fail "kubectl gadget run failed"
	fi
	wait "$poker" || true
	cat "$out"
	grep -q hostname "$out" || fail "the gadget saw no exec of hostname in the test pod (output: $out)"
	say "kubectl gadget run works: it saw the test pod's exec of hostname"
}

# Stops every task of the cluster's containerd, and removes its containers with
# their network namespaces, so that nothing of the pods is left running: the
# kubelet starts them again at the next `up`.
stop_pods() {
	running containerd >/dev/null || return 0
	local netns=() id ns
	for id in $(ctr_ containers ls -q 2>/dev/null); do
		ns=$(ctr_ containers info "$id" 2>/dev/null |
			sed -n '/"type": "network"/{n;s/.*"path": "\(.*\)".*/\1/p}' | head -n1)
		case "$ns" in /run/netns/* | /var/run/netns/*) netns+=("$ns") ;; esac
		ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
	done
	for id in $(ctr_ containers ls -q 2>/dev/null); do
		for _ in $(seq 1 20); do
			ctr_ tasks delete "$id" >/dev/null 2>&1 && break
			[[ $'\n'"$(ctr_ tasks ls -q 2>/dev/null)"$'\n' == *$'\n'"$id"$'\n'* ]] || break
			sleep 0.25
		done
		ctr_ containers delete "$id" >/dev/null 2>&1 || true
	done
	for ns in $(printf '%s\n' "${netns[@]}" | sort -u); do
		[ -e "$ns" ] || continue
		umount "$ns" 2>/dev/null || true
		rm -f "$ns"
	done
	# Every pod is gone: so are their addresses.
	rm -rf "$state/cni/networks/igdeadlock"
}

down() {
	stop kubelet
	stop_pods
	stop kube-proxy
	if [ -x "${bin:-}/kube-proxy" ] || bin=$("$here/build.sh" 2>/dev/null); then
		"$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
	fi
	stop kube-scheduler
	stop kube-controller-manager
	stop kube-apiserver
	stop etcd
	stop containerd
	# Shims of our containerd outlive it; with their tasks deleted they exit,
	# any left are ours (they name our containerd's socket).
	local pid
	for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $containerd_sock( |$)" || true); do
		kill -KILL "$pid" 2>/dev/null || true
	done
	stop registry
	# Volumes the kubelet mounted for pods (service account tokens, ...).
	local m
	for m in $(findmnt -rn -o TARGET | grep -E "^($state|$run)/" | sort -r || true); do
		umount -l "$m" 2>/dev/null || true
	done
	teardown_network
	# The kubelet's cgroups (empty once the pods are gone).
	local c
	for c in /sys/fs/cgroup/*/kubepods; do
		[ -d "$c" ] || continue
		find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
	say "down"
}

status() {
	local name pid any=3
	for name in registry containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
		if pid=$(running "$name"); then
			echo "cluster: $name running (PID $pid)"
			any=0
		else
			echo "cluster: $name not running"
		fi
	done
	return $any
}

case "${1:-}" in
up) up ;;
ig) ig_up ;;
down) down ;;
status) status ;;
*)
	echo "usage: $0 up|ig|down|status" >&2
	exit 2
	;;
esac
