"""Mutual TLS to a remote ig daemon, with certificates made by the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from helpers import IMAGE, program_facts, require_root_and_ig, run_cli
from igdeadlock.ig.daemon import daemon_command, find_ig

SERVER_NAME = "igdeadlock-test-daemon"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory):
    """A CA, a server certificate for SERVER_NAME and a client certificate, all signed by the CA."""
    d = str(directory)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=igdeadlock test CA",
            "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    for name, usage in (("server", f"subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth"),
                        ("client", "extendedKeyUsage=clientAuth")):
        (directory / f"{name}.ext").write_text(usage + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=igdeadlock test {name}",
                "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr")
        openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
                "-CAcreateserial", "-days", "1", "-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.pem")
    return {name: f"{d}/{name}" for name in ("ca", "server", "client")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tls_daemon(tmp_path):
    require_root_and_ig()
    certs = make_certificates(tmp_path)
    port = free_port()
    command = daemon_command(find_ig(), "", listen=f"tcp://127.0.0.1:{port}",
                             tls_files=(certs["server"] + ".key", certs["server"] + ".pem", certs["ca"] + ".pem"))
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:  # until it listens
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert daemon.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
    yield f"tcp://127.0.0.1:{port}", certs
    os.killpg(daemon.pid, signal.SIGTERM)  # ig and the unshare that may wrap it
    daemon.wait(30)
    log.close()


def test_mutual_tls_trace(tls_daemon, program):
    address, certs = tls_daemon
    result = run_cli(["trace", "--remote", address, "--image", IMAGE, "--format", "json",
                      "--tls-ca", certs["ca"] + ".pem", "--tls-cert", certs["client"] + ".pem",
                      "--tls-key", certs["client"] + ".key", "--tls-server-name", SERVER_NAME,
                      "--", str(program("abba"))])
    assert result.returncode == 0, result.stderr
    facts = program_facts(result.stderr)
    assert '"kind": "potential-deadlock"' in result.stdout
    assert hex(facts["A"][0]) in result.stdout


def test_tls_without_a_client_certificate_is_refused(tls_daemon, program):
    address, certs = tls_daemon
    result = run_cli(["trace", "--remote", address, "--image", IMAGE, "--tls-ca", certs["ca"] + ".pem",
                      "--tls-server-name", SERVER_NAME, "--", "true"])
    assert result.returncode == 2
    assert "igdeadlock:" in result.stderr


def test_plaintext_to_a_tls_daemon_is_refused(tls_daemon):
    address, _ = tls_daemon
    result = run_cli(["trace", "--remote", address, "--image", IMAGE, "--", "true"])
    assert result.returncode == 2


def test_mutual_tls_watch_on_the_loopback(tls_daemon, program, tmp_path):
    from helpers import IGDEADLOCK, Lines, finding_of

    address, certs = tls_daemon
    out = tmp_path / "report.json"
    watch = subprocess.Popen([*IGDEADLOCK, "watch", "--remote", address, "--image", IMAGE, "--format", "json",
                              "-o", str(out), "--status-interval", "0.5", "--fetch-interval", "250",
                              "--tls-ca", certs["ca"] + ".pem", "--tls-cert", certs["client"] + ".pem",
                              "--tls-key", certs["client"] + ".key", "--tls-server-name", SERVER_NAME],
                             stderr=subprocess.PIPE, text=True)
    lines = Lines(watch.stderr)
    try:
        lines.wait_for(lambda line: "1/1 targets connected" in line)
        subprocess.run([str(program("abba"))], check=True, capture_output=True)
        lines.wait_count(finding_of("abba-"), 1)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(60) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
    assert '"kind": "potential-deadlock"' in out.read_text()
