"""Faults and limits: absent or refusing daemons, Ctrl-C, full maps, reused pids."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent import futures

import grpc

from conftest import IGDEADLOCK, IMAGE, Lines, program_facts, run_cli, trace_json
from igdeadlock.bpfsys import Bpf
from igdeadlock.proto import api_pb2, api_pb2_grpc
from igdeadlock.wire import GadgetService, WireError, parse_address


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
    assert '"schema": "igdeadlock/report/v2"' in out and "interrupted" in err
    assert not os.path.exists(directory)  # no private daemon, no socket, no temp files
    assert not (running & {p.id for p in Bpf().programs()})  # programs (and their uprobes) are gone


def test_full_edge_map_is_counted(ig_daemon, program):
    count = 10_000  # the edge map holds 8,192 new edges between two fetches
    report, stderr = trace_json(ig_daemon, [program("manylocks"), str(count)], "--fetch-interval", "5000")
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
    from igdeadlock import cli

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
