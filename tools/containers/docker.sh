#!/usr/bin/env bash
# A Docker engine for the tests that run programs in containers.
#
#   tools/containers/docker.sh start    start dockerd unless `docker info` answers
#   tools/containers/docker.sh stop     stop the dockerd this script started
#   tools/containers/docker.sh status   say whether Docker answers (exit 0) or not (exit 3)
#
# Idempotent. The build machines boot without a Docker engine, cannot reach a
# registry, and have cgroup v1; tests need no container network (programs come
# in through read-only bind mounts), so dockerd runs without bridge and
# iptables rules: nothing depends on the iptables variant or the kernel's
# netfilter modules, which are what most often keeps dockerd from starting on
# small VMs. Its log goes to $DOCKERD_LOG.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log=${DOCKERD_LOG:-/var/log/igdeadlock-dockerd.log}
# Our own pid file: `stop` only ever stops the dockerd that `start` started.
pidfile=/run/igdeadlock-dockerd.pid
start_timeout=${DOCKERD_START_TIMEOUT:-60}
launched=

answers() {
	timeout 10 docker info >/dev/null 2>&1
}

our_pid() {
	local pid
	pid=$(cat "$pidfile" 2>/dev/null) || return 1
	[ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && echo "$pid"
}

# True while the dockerd being waited for has not exited: the one launched
# here (its PID is known at once), else one started earlier or by others.
still_starting() {
	if [ -n "$launched" ]; then
		kill -0 "$launched" 2>/dev/null
	else
		our_pid >/dev/null || pgrep -x dockerd >/dev/null
	fi
}

fail() {
	echo "docker: $*" >&2
	exit 1
}

start() {
	if answers; then
		echo "docker: running"
		return 0
	fi
	if ! command -v dockerd >/dev/null && [ ! -x /usr/sbin/dockerd ]; then
		echo "docker: dockerd is missing; installing the test packages"
		"$here/../setup-packages.sh" test
	fi
	command -v docker >/dev/null || fail "the docker command is missing: run tools/setup-packages.sh test"
	local dockerd
	dockerd=$(command -v dockerd || echo /usr/sbin/dockerd)

	if our_pid >/dev/null; then
		echo "docker: dockerd started earlier is not answering yet; waiting"
	elif pgrep -x dockerd >/dev/null; then
		echo "docker: a dockerd not started by $0 is running but not answering yet; waiting"
	else
		mkdir -p "$(dirname "$log")"
		echo "=== $(date -Is) $0 start" >>"$log"
		# --bridge=none --iptables=false --ip-masq=false: no network set-up
		# (containers get only a loopback). IP forwarding is left to dockerd's
		# default (it turns net.ipv4.ip_forward on), or every `docker run`
		# warns "IPv4 forwarding is disabled". cgroupfs is the cgroup driver
		# without systemd, spelled out because this is cgroup v1.
		# setsid --wait: the background job lives exactly as long as dockerd,
		# so "did it exit?" is asked of that PID and not of pgrep, which
		# cannot see dockerd before setsid has exec'd it.
		setsid --wait "$dockerd" \
			--host unix:///var/run/docker.sock \
			--pidfile "$pidfile" \
			--bridge=none --iptables=false --ip-masq=false \
			--exec-opt native.cgroupdriver=cgroupfs \
			</dev/null >>"$log" 2>&1 &
		launched=$!
	fi

	local start deadline
	start=$(date +%s)
	deadline=$((start + start_timeout))
	while ! answers; do
		if ! still_starting; then
			tail -n 5 "$log" >&2 || true
			fail "dockerd exited at start; see $log (if another Docker engine owns /var/run/docker.sock or /var/lib/docker, stop it, then run $0 start again)"
		fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			fail "dockerd did not answer within ${start_timeout}s; see $log, then run $0 stop and $0 start"
		fi
		sleep 0.5
	done
	echo "docker: started in $(($(date +%s) - start))s (log: $log)"
}

stop() {
	local pid
	if ! pid=$(our_pid); then
		if answers; then
			echo "docker: running, but not started by $0; leaving it"
		else
			echo "docker: not running"
		fi
		return 0
	fi
	kill -TERM "$pid"
	# dockerd stops its containers first (10 s grace each, in parallel).
	for _ in $(seq 1 60); do
		[ -d "/proc/$pid" ] || break
		sleep 0.5
	done
	if [ -d "/proc/$pid" ]; then
		kill -KILL "$pid"
		echo "docker: dockerd (PID $pid) did not stop within 30s; killed" >&2
	fi
	rm -f "$pidfile"
	echo "docker: stopped"
}

status() {
	if answers; then
		local pid
		if pid=$(our_pid); then
			echo "docker: running (dockerd PID $pid, started by $0, log: $log)"
		else
			echo "docker: running"
		fi
		return 0
	fi
	echo "docker: not running (start it with: $0 start)"
	return 3
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
