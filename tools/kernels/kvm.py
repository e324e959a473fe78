#!/usr/bin/env python3
"""Boots Debian's kernels in small KVM guests that see this machine's files.

    kvm.py list                          the kernels of kernels.txt
    kvm.py fetch [NAME...]               download and prepare them (cached)
    kvm.py run NAME [-t SECONDS] [-m MIB] [--modules] -- COMMAND...
                                         boot NAME, run COMMAND in the guest as
                                         root, print its output, exit with its status
                                         (--modules: with all of its modules)

A guest sees this machine's root filesystem read-only through 9p, under a
tmpfs overlay (its writes vanish when it stops), so it runs the very ig, gadget
image, virtualenv and test programs built here, on another kernel. It has 2
CPUs, 4 GiB and no network. COMMAND runs in the current directory with the
variables named by --env; IGDEADLOCK_GUEST_OUT names a directory shared with
this machine (its files are copied to --out, if given).

Everything is cached under $IGDEADLOCK_CACHE/kernels (default
/var/cache/igdeadlock/kernels): Debian's package lists (refreshed after a
week), each kernel's package, and the guest's boot files. Packages come from
Debian's mirror through apt, which checks their signatures.
"""

from __future__ import annotations

import argparse
import lzma
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
KERNELS_FILE = HERE / "kernels.txt"
GUEST_INIT = HERE / "guest-init.sh"
CACHE = Path(os.environ.get("IGDEADLOCK_CACHE", "/var/cache/igdeadlock")) / "kernels"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE = 7 * 24 * 3600
BUSYBOX = Path("/bin/busybox")
# Where the shared directory is mounted in the guest.
GUEST_OUT = "/igdeadlock-guest"
# What the initramfs loads to reach this machine's files: 9p over virtio, and
# overlayfs (their dependencies are found in the modules themselves).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# Raised by a guest whose command could not even start.
GUEST_FAILED = 125


class KernelError(Exception):
    """A kernel could not be fetched or booted; the message says why."""


@dataclass(frozen=True)
class Kernel:
    name: str
    suite: str
    package: str  # a regular expression
    expect: str  # "trace" or "refuse"

    @property
    def dir(self) -> Path:
        return CACHE / self.name


def read_kernels(path: Path = KERNELS_FILE) -> List[Kernel]:
    kernels = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 4 or words[3] not in ("trace", "refuse"):
            raise KernelError(f"{path}:{number}: expected 'name suite package trace|refuse', got {line!r}")
        kernels.append(Kernel(*words))
    return kernels


def kernel_named(name: str) -> Kernel:
    for kernel in read_kernels():
        if kernel.name == name:
            return kernel
    raise KernelError(f"no kernel {name!r} in {KERNELS_FILE} (there: "
                      f"{', '.join(k.name for k in read_kernels())})")


# --- Debian packages, through a private apt configuration -----------------

def apt_options() -> List[str]:
    apt = CACHE / "apt"
    return ["-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
            "-o", "Dir::State::Status=/dev/null", "-o", "Acquire::Languages=none",
            "-o", "APT::Sandbox::User=root", "-q"]


def update_lists(suites: Iterable[str]) -> None:
    """Debian's package lists of `suites`, fetched when missing or a week old."""
    suites = sorted(set(suites))
    apt = CACHE / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = "".join(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n" for suite in suites)
    stamp = apt / "updated"
    sources_file = apt / "sources.list"
    fresh = (stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
             and sources_file.exists() and sources_file.read_text() == sources)
    if fresh:
        return
    sources_file.write_text(sources)
    print(f"kvm: fetching Debian's package lists ({', '.join(suites)})", file=sys.stderr)
    run = subprocess.run(["apt-get", *apt_options(), "update"], capture_output=True, text=True)
    if run.returncode != 0:
        raise KernelError(f"apt-get update failed:\n{run.stdout}{run.stderr}")
    stamp.touch()


# The packages Debian's newer kernels ship their image and modules in.
KERNEL_PARTS = r"\b(linux-(?:base|binary|modules)-[^\s,(]+)"


def natural_key(text: str) -> List[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def newest_package(kernel: Kernel) -> str:
    run = subprocess.run(["apt-cache", *apt_options(), "search", "--names-only", kernel.package],
                         capture_output=True, text=True, check=True)
    pattern = re.compile(kernel.package)
    names = [line.split(" - ", 1)[0] for line in run.stdout.splitlines()]
    names = [n for n in names if pattern.search(n)]
    if not names:
        raise KernelError(f"kernel {kernel.name}: no package of {kernel.suite} matches {kernel.package}")
    # an archive being updated can list a new kernel before the packages its
    # image depends on: the newest whose parts are all there
    for name in sorted(names, key=natural_key, reverse=True):
        if all(_available(part) for part in _kernel_parts(name)):
            return name
    raise KernelError(f"kernel {kernel.name}: every package matching {kernel.package} depends on "
                      f"packages {kernel.suite} does not have (yet): try again later")


def _kernel_parts(package: str) -> List[str]:
    """The image and module packages a linux-image package depends on (7.x, 6.18 backports)."""
    show = subprocess.run(["apt-cache", *apt_options(), "show", package], capture_output=True, text=True)
    depends = next((line for line in show.stdout.splitlines() if line.startswith("Depends:")), "")
    return re.findall(KERNEL_PARTS, depends)


def _available(package: str) -> bool:
    policy = subprocess.run(["apt-cache", *apt_options(), "policy", package], capture_output=True, text=True)
    return "Candidate:" in policy.stdout and "Candidate: (none)" not in policy.stdout


# --- The guest's boot files -------------------------------------------------

def module_dependencies(ko: bytes) -> List[str]:
    """The modules a module needs (its .modinfo "depends=" entry)."""
    found = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko)
    if not found or not found.group(1):
        return []
    return found.group(1).decode().split(",")


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    if path.suffix == ".gz":
        import gzip
        return gzip.decompress(data)
    return data


def boot_modules(modules_root: Path) -> List[tuple]:
    """(name, bytes) of BOOT_MODULES and what they need, in load order. A module
    built into the kernel (modules.builtin) needs no loading."""
    by_name: Dict[str, Path] = {}
    for path in modules_root.rglob("*.ko*"):
        name = path.name.split(".ko")[0]
        by_name[name] = path
        by_name.setdefault(name.replace("-", "_"), path)
    builtin = {Path(line).name.split(".ko")[0].replace("-", "_")
               for line in (modules_root / "modules.builtin").read_text().split()}
    ordered: List[tuple] = []
    seen = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen or key in builtin:
            return
        seen.add(key)
        path = by_name.get(name) or by_name.get(key)
        if path is None:
            raise KernelError(f"module {name} is neither in the package nor built in")
        data = read_module(path)
        for dependency in module_dependencies(data):
            visit(dependency)
        ordered.append((key, data))

    for module in BOOT_MODULES:
        visit(module)
    return ordered


INITRAMFS_INIT = f"""#!/bin/busybox sh
# The initramfs of a kernel-matrix guest: this machine's root filesystem,
# read-only over 9p, under a tmpfs overlay; then its init (kvm.py's guest-init.sh).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {{ echo "igdeadlock-guest: $*"; poweroff -f; }}
for m in $(cat /modules/order); do insmod /modules/$m.ko || fail "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower || fail "no 9p root"
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot || fail "no overlay"
mkdir -p /newroot{GUEST_OUT}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /newroot{GUEST_OUT} || fail "no shared directory"
init=$(sed -n 's/.*igdeadlock.init=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot "$init"
"""


def cpio_newc(entries: Sequence[tuple]) -> bytes:
    """An initramfs archive (cpio "newc") of (path, mode, data) entries."""
    out = bytearray()
    for inode, (path, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        name = path.encode() + b"\0"
        fields = [inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + name
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def make_initramfs(modules: Sequence[tuple]) -> bytes:
    if not BUSYBOX.exists():
        raise KernelError(f"{BUSYBOX} is missing: install Debian's busybox-static (make setup-kernels)")
    directory, executable, regular = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFREG | 0o644
    entries = [(d, directory, b"") for d in ("bin", "dev", "proc", "sys", "lower", "upper", "newroot", "modules")]
    entries += [("bin/busybox", executable, BUSYBOX.read_bytes()), ("init", executable, INITRAMFS_INIT.encode())]
    entries += [(f"modules/{name}.ko", regular, data) for name, data in modules]
    entries.append(("modules/order", regular, "".join(f"{name}\n" for name, _ in modules).encode()))
    return cpio_newc(entries)


def download(package: str, directory: Path) -> Path:
    before = set(directory.glob("*.deb"))
    run = subprocess.run(["apt-get", *apt_options(), "download", package], cwd=directory,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise KernelError(f"apt-get download {package} failed:\n{run.stdout}{run.stderr}")
    (deb,) = set(directory.glob("*.deb")) - before
    return deb


def extract_kernel(package: str, directory: Path) -> tuple:
    """Unpack `package` (and the image and module packages it depends on) into
    `directory`/root: (root, release, modules_root, vmlinuz)."""
    root = directory / "root"
    deb = download(package, directory)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    # Debian's 7.x kernels ship the image and the modules in packages the
    # linux-image one depends on
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True,
                             check=True).stdout
    for part in re.findall(KERNEL_PARTS, depends):
        subprocess.run(["dpkg-deb", "-x", str(download(part, directory)), str(root)], check=True)
    # /boot/vmlinuz-RELEASE, or (7.x) /usr/lib/modules/RELEASE/vmlinuz
    found = sorted((root / "boot").glob("vmlinuz-*")) + sorted(root.glob("usr/lib/modules/*/vmlinuz"))
    if not found:
        raise KernelError(f"{package} (and what it depends on) has no vmlinuz")
    vmlinuz = found[0]
    release = vmlinuz.name[len("vmlinuz-"):] if vmlinuz.parent.name == "boot" else vmlinuz.parent.name
    modules_root = next(p for p in (root / "lib/modules" / release, root / "usr/lib/modules" / release)
                        if p.exists())
    return root, release, modules_root, vmlinuz


def fetch(kernel: Kernel) -> Path:
    """The kernel's boot files (vmlinuz, initramfs, package name), made once."""
    ready = kernel.dir / "ready"
    if ready.exists():
        return kernel.dir
    update_lists(k.suite for k in read_kernels())
    package = newest_package(kernel)
    print(f"kvm: preparing kernel {kernel.name} ({package})", file=sys.stderr)
    kernel.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kernel.dir) as tmp:
        root, release, modules_root, vmlinuz = extract_kernel(package, Path(tmp))
        config = sorted((root / "boot").glob("config-*")) + sorted(modules_root.glob("config"))
        initramfs = make_initramfs(boot_modules(modules_root))
        shutil.copy(vmlinuz, kernel.dir / "vmlinuz")
        if config:
            shutil.copy(config[0], kernel.dir / "config")
        (kernel.dir / "initramfs").write_bytes(initramfs)
        (kernel.dir / "package").write_text(f"{package} {release}\n")
    ready.touch()
    return kernel.dir


def fetch_modules(kernel: Kernel) -> Path:
    """All of the kernel's modules, with depmod's indexes, made once: a guest
    that runs more than the tests (a Kubernetes node: bridges, veth, netfilter)
    loads them with modprobe. Returns the directory that is the guest's
    /lib/modules/RELEASE."""
    boot = fetch(kernel)
    package, release = (boot / "package").read_text().split()
    tree = boot / "modules" / "lib" / "modules" / release
    ready = boot / "modules" / "ready"
    if ready.exists():
        return tree
    if shutil.which("depmod") is None:
        raise KernelError("depmod is missing: install Debian's kmod")
    print(f"kvm: unpacking the modules of {kernel.name} ({package})", file=sys.stderr)
    shutil.rmtree(boot / "modules", ignore_errors=True)
    update_lists(k.suite for k in read_kernels())
    with tempfile.TemporaryDirectory(dir=boot) as tmp:
        _, unpacked_release, modules_root, _ = extract_kernel(package, Path(tmp))
        if unpacked_release != release:
            raise KernelError(f"{package} now unpacks as {unpacked_release}, not {release}: "
                              f"remove {boot} and fetch it again")
        tree.parent.mkdir(parents=True)
        shutil.move(str(modules_root), str(tree))
    subprocess.run(["depmod", "-b", str(boot / "modules"), release], check=True)
    ready.touch()
    return tree


# --- Running a command in a guest -------------------------------------------

def qemu_binary() -> str:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise KernelError("qemu-system-x86_64 is missing: install Debian's qemu-system-x86 (make setup-kernels)")
    return qemu


def accelerator() -> List[str]:
    """KVM where it runs a distribution kernel; QEMU's emulator (TCG) elsewhere.

    A /dev/kvm served by PVM (kvm_pvm: KVM for machines without hardware
    virtualisation, as in many cloud VMs) boots only kernels built as PVM
    guests: a Debian kernel hangs before its first message. Such machines, and
    those without /dev/kvm, emulate the CPU: slower, the same kernel.
    IGDEADLOCK_QEMU_ACCEL=kvm|tcg overrides the choice."""
    choice = os.environ.get("IGDEADLOCK_QEMU_ACCEL")
    if choice is None:
        usable = os.access("/dev/kvm", os.R_OK | os.W_OK) and not Path("/sys/module/kvm_pvm").exists()
        choice = "kvm" if usable else "tcg"
    if choice == "kvm":
        # the host's CPU, without what nested hypervisors often refuse to set
        return ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    if choice == "tcg":
        # one host thread for all vCPUs: with a thread per vCPU, Debian's 6.12 and later
        # kernels oops in syscall_trace_enter (an int3 of live text patching, when a
        # syscall tracepoint is enabled) under QEMU 7.2's TCG; 6.1 does not
        threads = os.environ.get("IGDEADLOCK_TCG_THREADS", "single")
        return ["-accel", f"tcg,thread={threads}", "-cpu", "max"]
    raise KernelError(f"IGDEADLOCK_QEMU_ACCEL={choice}: expected kvm or tcg")


def run_in_guest(kernel: Kernel, command: Sequence[str], timeout: float = 900,
                 env: Optional[Dict[str, str]] = None, out: Optional[Path] = None,
                 memory_mib: int = 4096, modules: bool = False) -> subprocess.CompletedProcess:
    """Boot the kernel, run `command` in the guest (as root, in the current
    directory), and return its exit status and output (stdout and stderr
    together). The guest's console is in the output of a guest that failed.
    With `modules`, the guest's modprobe finds all of the kernel's modules."""
    boot = fetch(kernel)
    tree = fetch_modules(kernel) if modules else None
    qemu = qemu_binary()
    shared = Path(tempfile.mkdtemp(prefix=f"run-{kernel.name}-", dir=CACHE))
    try:
        guest_env = {"IGDEADLOCK_GUEST_OUT": GUEST_OUT, "IGDEADLOCK_KERNEL": kernel.name, **(env or {})}
        (shared / "command").write_text(shlex.join(command) + "\n")
        (shared / "cwd").write_text(os.getcwd() + "\n")
        (shared / "env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in guest_env.items()))
        if tree is not None:
            (shared / "modules").write_text(f"{tree}\n")
        console = shared / "console.log"
        args = [qemu, *accelerator(), "-smp", "2", "-m", str(memory_mib),
                "-kernel", str(boot / "vmlinuz"), "-initrd", str(boot / "initramfs"),
                "-append", f"console=ttyS0 panic=-1 quiet igdeadlock.init={GUEST_INIT} igdeadlock.name={kernel.name}",
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
                "-virtfs", f"local,path={shared},mount_tag=out,security_model=none",
                "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
                "-nic", "none", "-no-reboot"]
        try:
            subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False,
                           preexec_fn=_die_with_parent)
        except subprocess.TimeoutExpired:
            output = _read(shared / "output") + f"\nkvm: the guest did not stop within {timeout:.0f} s\n"
            return subprocess.CompletedProcess(args, GUEST_FAILED, output + _console_tail(console))
        status_file = shared / "status"
        output = _read(shared / "output")
        if not status_file.exists():
            return subprocess.CompletedProcess(args, GUEST_FAILED,
                                               output + "kvm: the guest stopped before its command ended\n"
                                               + _console_tail(console))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for item in (shared / "files").glob("*") if (shared / "files").exists() else ():
                shutil.copy(item, out / item.name)
        return subprocess.CompletedProcess(args, int(status_file.read_text().strip() or GUEST_FAILED), output)
    finally:
        if not os.environ.get("IGDEADLOCK_KEEP_RUN"):
            shutil.rmtree(shared, ignore_errors=True)


def _die_with_parent() -> None:
    """A guest whose runner is killed stops too (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _console_tail(console: Path, lines: int = 40) -> str:
    tail = _read(console).splitlines()[-lines:]
    return "kvm: the guest's console ended with:\n" + "\n".join(tail) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("list")
    fetch_parser = sub.add_parser("fetch")
    fetch_parser.add_argument("names", nargs="*")
    run_parser = sub.add_parser("run")
    run_parser.add_argument("name")
    run_parser.add_argument("-t", "--timeout", type=float, default=900)
    run_parser.add_argument("-m", "--memory", type=int, default=4096, help="the guest's memory (MiB)")
    run_parser.add_argument("--modules", action="store_true", help="let the guest load any of the kernel's modules")
    run_parser.add_argument("--env", action="append", default=[], help="NAME: pass this variable to the guest")
    run_parser.add_argument("--out", type=Path,
                            help="copy the files the command left in $IGDEADLOCK_GUEST_OUT/files here")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        if args.verb == "list":
            for kernel in read_kernels():
                ready = (kernel.dir / "ready").exists()
                state = (kernel.dir / "package").read_text().strip() if ready else "not fetched"
                print(f"{kernel.name:<6} {kernel.suite:<18} {kernel.expect:<7} {state}")
            return 0
        if args.verb == "fetch":
            kernels = [kernel_named(n) for n in args.names] if args.names else read_kernels()
            for kernel in kernels:
                print(f"{kernel.name}: {fetch(kernel)}")
            return 0
        if not command:
            parser.error("run: no COMMAND (kvm.py run NAME -- COMMAND...)")
        env = {name: os.environ[name] for name in args.env if name in os.environ}
        result = run_in_guest(kernel_named(args.name), command, timeout=args.timeout, env=env, out=args.out,
                              memory_mib=args.memory, modules=args.modules)
        sys.stdout.write(result.stdout)
        return result.returncode
    except KernelError as error:
        print(f"kvm: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
