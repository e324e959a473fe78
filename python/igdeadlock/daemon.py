"""A private ``ig daemon`` for one run, on a socket in a private directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from igdeadlock.wire import Address, GadgetService, WireError


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


def daemon_command(ig: str, socket_path: str, listen: Optional[str] = None,
                   tls_files: Optional[Tuple[str, str, str]] = None) -> List[str]:
    """`ig daemon` on ``socket_path`` (or ``listen``, e.g. tcp://127.0.0.1:PORT);
    ``tls_files`` = (key, certificate, client CA) makes it require mutual TLS."""
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
    if not pid_one_namespaces_readable():
        # Give ig a PID namespace of its own, where it is PID 1 itself.
        unshare = shutil.which("unshare")
        if unshare is None:
            raise DaemonError("PID 1's namespaces are hidden here and unshare(1) is missing (util-linux)")
        command = [unshare, "--pid", "--fork", "--mount-proc", "--"] + command
    return command


@dataclass
class PrivateDaemon:
    """Starts ``ig daemon`` on a fresh socket; ``stop()`` ends it and removes the socket."""

    ig: str
    log_path: Optional[str] = None
    directory: str = ""  # where the socket goes; a fresh private one when empty
    process: Optional[subprocess.Popen] = None
    _log: Optional[object] = field(default=None, repr=False)
    _owns_directory: bool = field(default=False, repr=False)

    @property
    def address(self) -> Address:
        return Address("unix", os.path.join(self.directory, "ig.socket"))

    def start(self, timeout: float = 30.0) -> Address:
        if os.geteuid() != 0:
            raise DaemonError("ig daemon needs root: run igdeadlock as root (sudo)")
        if not self.directory:
            self.directory = tempfile.mkdtemp(prefix="igdeadlock-")  # mode 0700: only we can reach the socket
            self._owns_directory = True
        command = daemon_command(self.ig, self.address.location)
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        with GadgetService(self.address) as service:
            while True:
                if self.process.poll() is not None:
                    self.stop()
                    raise DaemonError(f"ig daemon exited at start (status {self.process.returncode})"
                                      + (f"; see {self.log_path}" if self.log_path else ""))
                if os.path.exists(self.address.location):
                    try:
                        service.server_info(timeout=1.0)
                        return self.address
                    except WireError:
                        pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise DaemonError(f"ig daemon did not answer within {timeout:g}s")
                time.sleep(0.05)

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
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()  # type: ignore[union-attr]
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
