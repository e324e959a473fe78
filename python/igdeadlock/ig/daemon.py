"""A private ``ig daemon`` for one run, on a socket in a private directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, List, Optional, Tuple

from igdeadlock.ig.service import Address, GadgetService, WireError


class DaemonError(RuntimeError):
    """The private daemon could not be started."""


def find_ig(explicit: Optional[str] = None) -> str:
    path = explicit or os.environ.get("IGDEADLOCK_IG") or shutil.which("ig")
    if not path or not os.access(path, os.X_OK):
        raise DaemonError(
            "ig (Inspektor Gadget) is not installed: run `make setup` in the igdeadlock "
            "checkout, or install ig and put it on PATH (or pass --ig PATH)"
        )
    return path


def pid_one_namespaces_readable() -> bool:
    """ig's LocalManager reads PID 1's mount namespace; some sandboxes hide it."""
    try:
        os.stat("/proc/1/ns/mnt")
        return True
    except PermissionError:
        return False
    except OSError:
        return True


# Whether an ig binary (by path, modification time, size) had to run in a PID
# namespace of its own here, as learnt by starting it.
_OWN_PID_NAMESPACE: Dict[Tuple[str, int, int], bool] = {}


def _ig_identity(ig: str) -> Tuple[str, int, int]:
    try:
        info = os.stat(ig)
    except OSError:
        return ig, 0, 0
    return os.path.realpath(ig), info.st_mtime_ns, info.st_size


def needs_own_pid_namespace(ig: str) -> bool:
    """Whether `ig daemon` must run in a PID namespace of its own (``unshare --pid``) here.

    Only where PID 1's namespaces are hidden, and only for an ig that cannot cope:
    a stock ig's LocalManager reads PID 1's mount namespace and exits at start,
    while the ig that `make setup` builds stands in for the host with its own
    process and also sees the host's processes (containers included). Learnt once
    per ig binary, by starting a daemon (see PrivateDaemon.start)."""
    if pid_one_namespaces_readable():
        return False
    known = _OWN_PID_NAMESPACE.get(_ig_identity(ig))
    if known is None:
        probe = PrivateDaemon(ig)
        try:
            probe.start()
        finally:
            probe.stop()
        known = _OWN_PID_NAMESPACE[_ig_identity(ig)]
    return known


def daemon_command(ig: str, socket_path: str, listen: Optional[str] = None,
                   tls_files: Optional[Tuple[str, str, str]] = None,
                   own_pid_namespace: Optional[bool] = None) -> List[str]:
    """`ig daemon` on ``socket_path`` (or ``listen``, e.g. tcp://127.0.0.1:PORT);
    ``tls_files`` = (key, certificate, client CA) makes it require mutual TLS.
    ``own_pid_namespace`` wraps it in ``unshare --pid``; by default only where this
    ig needs it (needs_own_pid_namespace)."""
    command = [
        ig, "daemon",
        "--host", listen or "unix://" + socket_path,
        "--verify-image=false",  # locally built gadget images are not signed
        "--auto-mount-filesystems",
    ]
    if tls_files is None:
        command.append("--tls-insecure")  # a unix socket in a private directory: no TLS needed
    else:
        key, certificate, client_ca = tls_files
        command += ["--tls-key-file", key, "--tls-cert-file", certificate, "--tls-client-ca-file", client_ca]
    if own_pid_namespace is None:
        own_pid_namespace = needs_own_pid_namespace(ig)
    if own_pid_namespace:
        # Give ig a PID namespace of its own, where it is PID 1 itself; it then
        # sees no process outside it (no container's either).
        unshare = shutil.which("unshare")
        if unshare is None:
            raise DaemonError("PID 1's namespaces are hidden here and unshare(1) is missing (util-linux)")
        command = [unshare, "--pid", "--fork", "--kill-child", "--mount-proc", "--"] + command
    # The daemon ends with whoever started it, even if that is killed outright
    # (SIGKILL leaves no chance to stop it).
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        command = [setpriv, "--pdeathsig", "KILL", "--"] + command
    return command


@dataclass
class PrivateDaemon:
    """Starts ``ig daemon`` on a fresh socket; ``stop()`` ends it and removes the socket."""

    ig: str
    log_path: Optional[str] = None
    directory: str = ""  # where the socket goes; a fresh private one when empty
    process: Optional[subprocess.Popen] = None
    _log: Optional[BinaryIO] = field(default=None, repr=False)  # None: no log kept
    _owns_directory: bool = field(default=False, repr=False)

    @property
    def address(self) -> Address:
        return Address("unix", os.path.join(self.directory, "ig.socket"))

    def start(self, timeout: float = 30.0) -> Address:
        """Starts the daemon and waits until it answers.

        ig runs as it is first. Where PID 1's namespaces are hidden, a stock ig exits
        at start (its LocalManager reads PID 1's mount namespace): it is then started
        again in a PID namespace of its own, as the only way it runs there (it sees
        no process outside that namespace then). Which way worked is remembered for
        this ig binary."""
        if os.geteuid() != 0:
            raise DaemonError("ig daemon needs root: run igdeadlock as root (sudo)")
        if not self.directory:
            self.directory = tempfile.mkdtemp(prefix="igdeadlock-")  # mode 0700: only we can reach the socket
            self._owns_directory = True
        self._log = open(self.log_path, "ab") if self.log_path else None
        identity = _ig_identity(self.ig)
        known = _OWN_PID_NAMESPACE.get(identity)
        if known is not None:
            attempts = [known]
        elif pid_one_namespaces_readable():
            attempts = [False]
        else:
            attempts = [False, True]
        deadline = time.monotonic() + timeout
        for attempt, own_pid_namespace in enumerate(attempts):
            command = daemon_command(self.ig, self.address.location, own_pid_namespace=own_pid_namespace)
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self._log or subprocess.DEVNULL,
                stderr=self._log or subprocess.DEVNULL, start_new_session=True
            )
            if self._wait_until_serving(deadline, timeout):
                _OWN_PID_NAMESPACE[identity] = own_pid_namespace
                return self.address
            status = self.process.returncode
            if attempt + 1 < len(attempts):
                # Most likely a stock ig that cannot read PID 1's mount namespace.
                self._note(f"igdeadlock: ig daemon exited at start (status {status}) where PID 1's "
                           "namespaces are hidden; starting it again in a PID namespace of its own\n")
                try:
                    os.unlink(self.address.location)
                except OSError:
                    pass
                continue
            self.stop()
            raise DaemonError(f"ig daemon exited at start (status {status})"
                              + (f"; see {self.log_path}" if self.log_path else ""))
        raise AssertionError("unreachable")

    def _wait_until_serving(self, deadline: float, timeout: float) -> bool:
        """True once the daemon answers, False if it exits first; DaemonError at the deadline."""
        assert self.process is not None
        with GadgetService(self.address) as service:
            while True:
                if self.process.poll() is not None:
                    return False
                if os.path.exists(self.address.location):
                    try:
                        service.server_info(timeout=1.0)
                        return True
                    except WireError:
                        pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise DaemonError(f"ig daemon did not answer within {timeout:g}s")
                time.sleep(0.05)

    def _note(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text.encode())
            self._log.flush()

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
        self._log = None
        if self.directory and self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = ""
        elif self.directory:
            try:
                os.unlink(self.address.location)
            except OSError:
                pass

    def __enter__(self) -> "PrivateDaemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
