"""Starting the traced command: checked before anything else starts, held just
before its exec until tracing is ready, ended with its session.

Light on purpose (no gRPC, no analysis): the command line checks COMMAND with it
before loading the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Optional, Sequence

from igdeadlock.host.locklib import CommandError, find_program


def terminate(process: subprocess.Popen, grace: float = 2.0) -> None:
    """End a process and its session (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


# The process COMMAND runs in waits, before exec, until tracing is ready: its
# pid is known first (the gadget follows its process tree) and its first
# instruction is traced. It gives up when igdeadlock goes away (the pipe closes),
# and COMMAND ends with igdeadlock however that ends (even killed): it never
# runs on untraced (PR_SET_PDEATHSIG, kept across exec).
_LAUNCHER = """
import ctypes, os, signal, sys
go, parent, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
ctypes.CDLL(None).prctl(1, signal.SIGKILL)
if os.getppid() != parent or os.read(go, 1) != b"g":
    os._exit(125)
os.close(go)
try:
    os.execvp(command[0], command)
except OSError as exc:
    sys.stderr.write(f"igdeadlock: cannot run {command[0]}: {exc.strerror}\\n")
    os._exit(127)
"""


class CommandLauncher:
    """COMMAND in a new session, held just before its exec until ``release()``."""

    def __init__(self, command: Sequence[str], stdout: Optional[int] = None) -> None:
        read_end, self._go = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(read_end), str(os.getpid()), *command],
                pass_fds=(read_end,), start_new_session=True, stdout=stdout)
        finally:
            os.close(read_end)
        self.released = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        os.write(self._go, b"g")
        os.close(self._go)
        self.released = True

    def abort(self) -> None:
        """Never run COMMAND (tracing could not start)."""
        if not self.released:
            os.close(self._go)
            self.released = True
        terminate(self.process)


def check_command(command: Sequence[str]) -> str:
    """The executable COMMAND names (found like execvp does), or CommandError in
    one sentence, before anything starts."""
    try:
        return find_program(command[0], os.environ.get("PATH", os.defpath), os.getcwd())
    except CommandError as exc:
        raise CommandError(f"cannot run {exc}", exc.errno) from None
