"""Real servers under load for `make bench`: Debian's memcached driven by
memcaslap, and MariaDB driven by sysbench oltp_read_write. Each server is
started once, in a directory of its own, and measured untraced, under the floor
and under igdeadlock by the caller (bench.py), which sets the probes up between
the runs. Throughput is what the load generator reports."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List

THREADS = 4  # server threads and load-generator threads: this machine has few cores


class ServerError(RuntimeError):
    """A server or its load generator is missing or failed."""


@dataclass
class RunningServer:
    name: str
    workload: str  # what the load is, for the table
    load: Callable[[], float]  # one run of the load: operations (or transactions) per second


def _need(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]
    if missing:
        raise ServerError(f"{', '.join(missing)} missing: run `make setup-bench` (tools/packages.txt, group bench)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(ready: Callable[[], bool], server: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    """Until ``ready()``; the server must not die meanwhile."""
    deadline = time.monotonic() + timeout
    while not ready():
        if server.poll() is not None:
            raise ServerError(f"{what} exited with status {server.returncode} while starting")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} did not start within {timeout:g}s")
        try:
            server.wait(0.1)
        except subprocess.TimeoutExpired:
            pass


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _number(pattern: str, text: str, what: str) -> float:
    found = re.search(pattern, text)
    if not found:
        raise ServerError(f"{what}: no throughput in its output:\n{text[-2000:]}")
    return float(found.group(1))


@contextmanager
def memcached(seconds: int) -> Iterator[RunningServer]:
    _need("memcached", "memcaslap")
    port = _free_port()
    server = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-U", "0",
                               "-t", str(THREADS), "-m", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"version\r\n")
                return connection.recv(64).startswith(b"VERSION")
        except OSError:
            return False

    def load() -> float:
        out = subprocess.run(["memcaslap", "-s", f"127.0.0.1:{port}", "-T", str(THREADS), "-c", "32",
                              "-t", f"{seconds}s"], capture_output=True, text=True, timeout=seconds + 120)
        if out.returncode != 0:
            raise ServerError(f"memcaslap failed: {out.stderr[-2000:]}")
        return _number(r"TPS:\s*(\d+)", out.stdout, "memcaslap")

    try:
        _wait(answers, server, "memcached")
        yield RunningServer("memcached", f"memcaslap, {THREADS} threads, 32 connections, {seconds} s", load)
    finally:
        _stop(server)


@contextmanager
def mariadb(workdir: Path, seconds: int) -> Iterator[RunningServer]:
    _need("mariadbd", "mariadb-install-db", "mariadb-admin", "sysbench")
    data = workdir / "mariadb"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    sock = data / "mysqld.sock"
    install = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                              "--auth-root-authentication-method=normal", "--skip-test-db"],
                             capture_output=True, text=True)
    if install.returncode != 0:
        raise ServerError(f"mariadb-install-db failed: {install.stderr[-2000:]}")
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    server = subprocess.Popen([mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={sock}",
                               f"--pid-file={data / 'mysqld.pid'}", "--skip-networking", "--user=root",
                               "--innodb-buffer-pool-size=256M", "--innodb-flush-log-at-trx-commit=2",
                               f"--log-error={data / 'error.log'}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        return subprocess.run(["mariadb-admin", f"--socket={sock}", "-uroot", "ping"],
                              capture_output=True).returncode == 0

    common: List[str] = ["--db-driver=mysql", f"--mysql-socket={sock}", "--mysql-user=root", "--tables=4",
                         "--table-size=10000", f"--threads={THREADS}"]

    def sysbench(*args: str, timeout: float) -> str:
        out = subprocess.run(["sysbench", "oltp_read_write", *common, *args], capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise ServerError(f"sysbench {args[-1]} failed: {out.stdout[-1500:]}{out.stderr[-1500:]}")
        return out.stdout

    def load() -> float:
        return _number(r"transactions:\s+\d+\s+\(([\d.]+) per sec", sysbench(f"--time={seconds}", "run",
                                                                             timeout=seconds + 120), "sysbench")

    try:
        _wait(answers, server, "mariadbd", timeout=120)
        created = subprocess.run(["mariadb", f"--socket={sock}", "-uroot", "-e", "CREATE DATABASE sbtest"],
                                 capture_output=True, text=True)
        if created.returncode != 0:
            raise ServerError(f"creating the sbtest database failed: {created.stderr}")
        sysbench("prepare", timeout=600)
        yield RunningServer("MariaDB", f"sysbench oltp_read_write, {THREADS} threads, 4 x 10,000 rows, "
                                       f"{seconds} s", load)
    finally:
        _stop(server)
        shutil.rmtree(data, ignore_errors=True)
