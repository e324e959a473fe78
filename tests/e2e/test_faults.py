"""Faults and limits: absent or refusing daemons, Ctrl-C, full maps, reused pids."""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent import futures

import grpc
import pytest

from helpers import IGDEADLOCK, IMAGE, Lines, program_facts, run_cli, trace_json
from igdeadlock.host.bpf import Bpf
from igdeadlock.ig.proto import api_pb2, api_pb2_grpc
from igdeadlock.ig.service import GadgetService, WireError, parse_address


def test_absent_daemon_fails_fast_with_a_clear_error(tmp_path):
    for remote in (f"unix://{tmp_path}/no.socket", "tcp://127.0.0.1:1"):
        started = time.monotonic()
        result = run_cli(["trace", "--remote", remote, "--", "true"])
        assert result.returncode == 2
        assert "no gadget service" in result.stderr
        assert time.monotonic() - started < 5


def test_permission_denied_on_the_socket_says_what_to_do(tmp_path):
    path = tmp_path / "ig.socket"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    os.chmod(path, 0o600)  # root only
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # an unprivileged user tries the root-only socket
        os.close(reader)
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            GadgetService(parse_address(f"unix://{path}")).server_info(timeout=2)
            message = "connected"
        except WireError as exc:
            message = str(exc)
        os.write(writer, message.encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    message = os.read(reader, 4096).decode()
    server.close()
    assert "permission denied" in message and "ig daemon --group" in message


class OtherVersion(api_pb2_grpc.BuiltInGadgetManagerServicer):
    def GetInfo(self, request, context):
        return api_pb2.InfoResponse(version="2.0", serverVersion="v9.9.9")


def test_daemon_of_another_api_version_is_named(tmp_path):
    # no ig release speaks another version yet: a stand-in server answers for one
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_BuiltInGadgetManagerServicer_to_server(OtherVersion(), server)
    server.add_insecure_port(f"unix://{tmp_path}/other.socket")
    server.start()
    try:
        result = run_cli(["trace", "--remote", f"unix://{tmp_path}/other.socket", "--", "true"])
    finally:
        server.stop(None)
    assert result.returncode == 2
    assert "'2.0'" in result.stderr and "'1.0'" in result.stderr and "v9.9.9" in result.stderr


def _our_programs():
    return {p.id for p in Bpf().programs() if p.name.startswith("trace_uprobe_mutex")}


def test_ctrl_c_writes_the_report_and_leaves_nothing_behind(program):
    before_dirs = set(glob.glob("/tmp/igdeadlock-*"))
    trace = subprocess.Popen([*IGDEADLOCK, "trace", "--image", IMAGE, "--format", "json", "--",
                              str(program("churn"))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = Lines(trace.stderr)
    try:
        lines.wait_for(lambda line: "mutex B" in line)  # the program runs under the gadget
        running = _our_programs() & {p.id for p in Bpf().programs()}
        assert running
        new_dirs = set(glob.glob("/tmp/igdeadlock-*")) - before_dirs
        assert len(new_dirs) == 1
        (directory,) = new_dirs
        assert os.stat(directory).st_mode & 0o777 == 0o700  # the private daemon's socket is ours alone
        trace.send_signal(signal.SIGINT)
        out = trace.stdout.read()
        trace.wait(60)
        err = lines.text()
    finally:
        if trace.poll() is None:
            trace.kill()
    assert trace.returncode == 0, err
    assert '"schema": "igdeadlock/report/v3"' in out and "interrupted" in err
    assert not os.path.exists(directory)  # no private daemon, no socket, no temp files
    # programs (and their uprobes) are gone once the kernel has retired the probes,
    # which a process of their own does (a grace period per probe)
    deadline = time.monotonic() + 60
    while running & {p.id for p in Bpf().programs()}:
        assert time.monotonic() < deadline, "the gadget's programs outlived igdeadlock"
        time.sleep(0.2)


@pytest.mark.parametrize("command,message", [
    (["/no/such/program"], "cannot run /no/such/program: no such file or directory"),
    (["/etc/passwd"], "cannot run /etc/passwd: permission denied (not executable)"),
    (["no-such-command-anywhere", "--flag"], "cannot run no-such-command-anywhere: command not found"),
])
def test_a_command_that_cannot_run_is_refused_at_once(command, message):
    started = time.monotonic()
    result = subprocess.run([*IGDEADLOCK, "trace", "--", *command], capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert result.stderr == f"igdeadlock: {message}\n"  # one sentence, nothing started
    assert elapsed < 0.5, elapsed


def _descendants(pid: int) -> set:
    """Every process below pid (from /proc/*/task/*/children)."""
    found, queue = set(), [pid]
    while queue:
        current = queue.pop()
        for children in glob.glob(f"/proc/{current}/task/*/children"):
            try:
                with open(children) as handle:
                    new = {int(c) for c in handle.read().split()}
            except OSError:
                continue
            queue.extend(new - found)
            found |= new
    return found


def _ig_daemons() -> set:
    pids = set()
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as handle:
                words = handle.read().split(b"\0")
        except OSError:
            continue
        if len(words) > 1 and words[0].endswith(b"/ig") and words[1] == b"daemon":
            pids.add(int(cmdline.split("/")[2]))
    return pids


@pytest.mark.parametrize("delay", [0.2, 0.6, 1.5])
def test_ctrl_c_while_starting_gives_a_report_of_nothing_and_no_traceback(delay):
    before = _ig_daemons()
    trace = subprocess.Popen([*IGDEADLOCK, "trace", "--image", IMAGE, "--format", "json", "--", "sleep", "30"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)  # no signal tells "still starting": the moments are the point
    trace.send_signal(signal.SIGINT)
    out, err = trace.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert trace.returncode == 130, err
    assert "interrupted before" in err and "nothing was traced" in err, err
    report = json.loads(out)
    assert report["findings"] == [] and report["notes"], report
    deadline = time.monotonic() + 10
    while _ig_daemons() - before:  # the private daemon it may have started is gone
        assert time.monotonic() < deadline, _ig_daemons() - before
        time.sleep(0.1)


def test_sigkill_of_igdeadlock_takes_its_private_daemon_along():
    trace = subprocess.Popen([*IGDEADLOCK, "trace", "--image", IMAGE, "--", "sleep", "60"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = Lines(trace.stderr)
    command = None
    try:
        lines.wait_for(lambda line: "attaches them itself" in line)  # daemon and gadget are up
        below = _descendants(trace.pid)
        daemons = below & _ig_daemons()
        assert daemons
        command = [pid for pid in below if open(f"/proc/{pid}/comm").read().strip() == "sleep"]
        trace.kill()
        trace.wait(10)
        deadline = time.monotonic() + 10
        while daemons & _ig_daemons():
            assert time.monotonic() < deadline, "the private ig daemon outlived igdeadlock"
            time.sleep(0.1)
    finally:
        if trace.poll() is None:
            trace.kill()
        for pid in command or []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_watch_status_says_why_a_target_is_not_connected(tmp_path):
    result = subprocess.run([*IGDEADLOCK, "watch", "--remote", f"unix://{tmp_path}/absent.socket", "--image", IMAGE,
                             "--duration", "1.5", "--status-interval", "0.5"], capture_output=True, text=True,
                            timeout=60)
    status = [line for line in result.stderr.splitlines() if "targets connected" in line]
    assert status, result.stderr
    assert all("0/1 targets connected" in line for line in status)
    assert f"unix://{tmp_path}/absent.socket lost (no gadget service" in status[-1], status[-1]


def test_full_edge_map_is_counted(ig_daemon, program):
    count = 140_000  # the edge map holds 131,072 new edges between two fetches
    report, stderr = trace_json(ig_daemon, [program("manylocks"), str(count)], "--fetch-interval", "60000",
                                timeout=300)
    stats = report["stats"]
    lost = stats["events_lost"]["edge_map_full"]
    assert lost > 0 and stats["edges_seen"] < count
    assert stats["edges_seen"] + lost >= count


def test_reused_pid_starts_clean(ig_daemon, program):
    report, stderr = trace_json(ig_daemon, [program("pidreuse")])
    facts = program_facts(stderr)
    assert facts["first"] == facts["second"]  # the kernel really reused the pid
    assert report["findings"] == []
    assert report["stats"]["processes_seen"] == 2


def test_missing_ig_says_how_to_get_it(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no ig on PATH, and no daemon on the default socket
    result = subprocess.run([*IGDEADLOCK, "trace", "--ig", str(tmp_path / "no-ig"), "--", "true"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "ig (Inspektor Gadget) is not installed" in result.stderr and "make setup" in result.stderr


def test_not_root_says_so():
    import importlib

    from igdeadlock import cli

    for module in cli._MODULES["trace"]:  # loaded as root: this Python's own files are root's alone
        importlib.import_module(module)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(reader)
        sys.stderr = os.fdopen(writer, "w")  # what igdeadlock says goes to the pipe
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        status = cli.main(["trace", "--", "true"])
        sys.stderr.flush()
        os._exit(status)
    os.close(writer)
    _, status = os.waitpid(child, 0)
    message = os.read(reader, 4096).decode()
    assert os.WEXITSTATUS(status) == 2
    assert "needs root" in message and "sudo" in message
