#!/bin/sh
# PID 1 of a kernel-matrix guest (tools/kernels/kvm.py), in this machine's root
# filesystem seen read-only under a tmpfs overlay: mounts what a booted system
# has, runs the command kvm.py left in the shared directory, records its exit
# status there, and powers the guest off.
out=/igdeadlock-guest
poweroff() {
	sync
	/bin/busybox poweroff -f
}
trap poweroff EXIT

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
# what udev would add to a devtmpfs: bash's process substitution needs /dev/fd
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
for n in 0:stdin 1:stdout 2:stderr; do
	[ -e "/dev/${n#*:}" ] || ln -s "/proc/self/fd/${n%%:*}" "/dev/${n#*:}"
done
mount -t devpts devpts /dev/pts
# the checkout the command runs in (and its virtualenv) may lie under a
# directory that gets a tmpfs of its own below (a clone in /tmp): it is held
# aside and bound back over that tmpfs, so the guest sees it wherever it is
checkout=$(cat "$out/cwd")
held=/mnt/igdeadlock-checkout
mkdir -p "$held" && mount --bind "$checkout" "$held"
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# state of this machine's daemons that the guest must not share or change
for dir in /var/lib/docker /var/lib/containerd /var/run/ig; do
	[ -d "$dir" ] && mount -t tmpfs -o mode=0711 tmpfs "$dir"
done
if [ -z "$(ls -A "$checkout" 2>/dev/null)" ]; then # hidden by a tmpfs above
	mkdir -p "$checkout" && mount --bind "$held" "$checkout"
fi
# the kernel's modules, for a guest that needs more than it booted with
if [ -s "$out/modules" ]; then
	release=$(uname -r)
	mkdir -p "/lib/modules/$release"
	mount --bind "$(cat "$out/modules")" "/lib/modules/$release"
fi
ip link set lo up 2>/dev/null
hostname "kvm-$(sed -n 's/.*igdeadlock.name=\([^ ]*\).*/\1/p' /proc/cmdline)"

export HOME=/root PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
. "$out/env"
mkdir -p "$out/files"
cd "$(cat "$out/cwd")" || exit
sh -c "$(cat "$out/command")" >"$out/output" 2>&1 </dev/null
echo $? >"$out/status"
