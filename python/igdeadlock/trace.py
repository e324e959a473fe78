"""``igdeadlock trace``: run one command under the gadget, from start to report,
or trace a process that runs already (``--pid``) until it ends."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from igdeadlock import DEFAULT_IMAGE
from igdeadlock.analysis.collector import Collector
from igdeadlock.analysis.coverage import ProcessCoverage
from igdeadlock.analysis.waitfor import DEFAULT_HANG_SECONDS, Deadlock, Hang
from igdeadlock.findings import collector_findings, learn_wait_stack, process_coverage
from igdeadlock.host.command import CommandLauncher, check_command, terminate
from igdeadlock.host.lockfunctions import BUILT_IN_FAMILIES, LockFamily
from igdeadlock.host.locklib import CommandError
from igdeadlock.host.procfs import process_alive, process_start_ns, why_not_a_user_process
from igdeadlock.ig.daemon import DaemonError, PrivateDaemon, find_ig
from igdeadlock.ig.service import DEFAULT_DAEMON_ADDRESS, Address, GadgetService, TlsConfig, WireError, parse_address
from igdeadlock.report.model import FindingView, Report
from igdeadlock.session import (
    CONNECT_TIMEOUT,
    DEFAULT_SNAPSHOT_SECONDS,
    INCOMPLETE_END_NOTE,
    GadgetSession,
    TraceError,
    gadget_params,
    local_daemon_answers,
)

DEFAULT_ANALYSIS_SECONDS = 120.0
INTERRUPTED_BEFORE_START = "interrupt-before-start"  # Ctrl-C before COMMAND ran: nothing traced


@dataclass
class TraceOptions:
    command: Sequence[str]
    image: str = DEFAULT_IMAGE
    remote: Optional[str] = None
    tls: Optional[TlsConfig] = None
    timeout: Optional[float] = None
    fetch_interval_ms: int = 100
    attach: str = "auto"  # auto | client | ig
    ig: Optional[str] = None
    daemon_log: Optional[str] = None
    command_stdout: Optional[int] = None  # file descriptor for the command's stdout
    stop_on_deadlock: bool = False  # end the trace once threads are deadlocked
    analysis_seconds: float = DEFAULT_ANALYSIS_SECONDS  # bound on the analysis after COMMAND ends
    hang_seconds: float = DEFAULT_HANG_SECONDS  # every thread waiting this long: all-threads-blocked
    unlock_checks: bool = False  # probe every mutex unlock: unlocks of another thread's lock are seen
    lock_families: Sequence[LockFamily] = BUILT_IN_FAMILIES  # lock functions beyond pthread's
    pid: Optional[int] = None  # trace this running process (and what it starts) instead of a command
    snapshot_interval: float = DEFAULT_SNAPSHOT_SECONDS  # blocked-thread snapshots this often (0: none)


@dataclass
class TraceOutcome:
    findings: List[FindingView]
    stats: Dict[str, object]
    command_status: Optional[int]
    ended_by: str  # "exit", "timeout", "deadlock", "interrupt" or INTERRUPTED_BEFORE_START
    notes: List[str] = field(default_factory=list)
    target: str = ""
    processes: List[ProcessCoverage] = field(default_factory=list)
    report_notes: List[str] = field(default_factory=list)  # what limits the report as a whole

    @property
    def report(self) -> Report:
        return Report(self.findings, self.stats, [{"address": self.target, "state": "connected", "error": None}],
                      self.processes, list(self.report_notes))


def trace_command(options: TraceOptions, say: Callable[[str], None]) -> TraceOutcome:
    """Trace ``options.command`` and its process tree (or the running process
    ``options.pid``); report when it ends."""
    if options.pid is not None:
        why = why_not_a_user_process(options.pid)
        if why is not None:
            raise TraceError(why)
    elif not options.command:
        raise TraceError("no command to trace: igdeadlock trace [OPTIONS] -- COMMAND [ARG...]")
    else:
        try:
            check_command(options.command)
        except CommandError as exc:
            raise TraceError(str(exc)) from None
    local = options.remote is None or options.remote.startswith("unix://") or options.remote.startswith("/")
    if local and os.geteuid() != 0:
        raise TraceError("igdeadlock trace needs root to trace with eBPF: run it with sudo")

    private: Optional[PrivateDaemon] = None
    try:
        if options.remote is not None:
            address = parse_address(options.remote)
        elif local_daemon_answers(parse_address(DEFAULT_DAEMON_ADDRESS)):
            address = parse_address(DEFAULT_DAEMON_ADDRESS)
        else:
            try:
                private = PrivateDaemon(find_ig(options.ig), log_path=options.daemon_log)
                address = private.start()
            except DaemonError as exc:
                raise TraceError(str(exc)) from exc
        return _trace_with(address, options, say)
    except KeyboardInterrupt:
        # Ctrl-C while tracing was being set up: COMMAND never ran
        return TraceOutcome([], {}, None, INTERRUPTED_BEFORE_START)
    finally:
        if private is not None:
            private.stop()


class _NewCommand:
    """COMMAND, held before its exec until tracing is live, ended with the trace."""

    def __init__(self, options: TraceOptions) -> None:
        self.launcher = CommandLauncher(options.command, stdout=options.command_stdout)
        self.pid = self.launcher.pid
        self.already_running = False

    def release(self) -> None:
        self.launcher.release()

    def running(self) -> bool:
        return self.launcher.process.poll() is None

    def end(self) -> None:
        terminate(self.launcher.process)

    def abort(self) -> None:
        self.launcher.abort()

    def status(self, started: bool) -> Optional[int]:
        return self.launcher.process.returncode if started else None


class _RunningProcess:
    """A process that ran before the trace: traced until it ends, never stopped here."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = process_start_ns(pid) or 0
        self.already_running = True

    def release(self) -> None:
        pass

    def running(self) -> bool:
        return process_alive(self.pid, self.start) is not False

    def end(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def status(self, started: bool) -> Optional[int]:
        return None


def _trace_with(address: Address, options: TraceOptions, say: Callable[[str], None]) -> TraceOutcome:
    params = gadget_params(options.fetch_interval_ms, options.image)
    with GadgetService(address, options.tls) as service:
        try:
            service.server_info(timeout=CONNECT_TIMEOUT)
        except WireError as exc:
            raise TraceError(str(exc)) from exc

        deadlocked: List[object] = []
        local = address.scheme == "unix"

        def on_deadlock(found: object) -> None:
            deadlocked.append(found)
            if isinstance(found, Hang):
                if local:  # while the process still runs: where its threads wait
                    for wait in found.waits:
                        learn_wait_stack(collector, wait)
                say(f"igdeadlock: hang: all {len(found.threads)} threads of pid {found.process.pid} "
                    f"({found.comm}) have waited {found.waited:.0f} s or more")
                return
            assert isinstance(found, Deadlock)
            threads = ", ".join(str(t) for t in found.threads)
            say(f"igdeadlock: deadlock: threads {threads} of pid {found.process.pid} "
                f"({found.comm}) are blocked in a lock cycle")

        # the gadget selects COMMAND's process tree in the kernel: no filter here
        collector = Collector(on_deadlock=on_deadlock, target=str(address),
                              node=socket.gethostname() if local else "", alive=process_alive if local else None,
                              hang_seconds=options.hang_seconds)
        traced = _RunningProcess(options.pid) if options.pid is not None else _NewCommand(options)
        ended_by = "exit"
        started = False
        report_notes: List[str] = []
        try:
            with GadgetSession(service, options.image, params, collector, options.attach, say,
                               tree_pid=traced.pid, unlock_checks=options.unlock_checks,
                               lock_families=options.lock_families, snapshot_interval=options.snapshot_interval,
                               # a running process's snapshot iterates its threads alone; a
                               # command's, the gadget's tree filter selects
                               snapshot_pids=(traced.pid,) if traced.already_running else (),
                               tree_running=traced.already_running) as session:
                try:
                    session.start()
                    traced.release()
                    started = True
                    deadline = None if options.timeout is None else time.monotonic() + options.timeout
                    while traced.running():
                        if deadline is not None and time.monotonic() >= deadline:
                            ended_by = "timeout"
                            break
                        if options.stop_on_deadlock and deadlocked:
                            ended_by = "deadlock"
                            break
                        session.pump_events(0.05)
                    traced.end()
                    if not session.final_fetch():
                        end_note = INCOMPLETE_END_NOTE.format(seconds=session.final_fetch_seconds())
                        say(f"igdeadlock: {end_note}")
                        report_notes.append(end_note)
                except KeyboardInterrupt:
                    ended_by = "interrupt" if started else INTERRUPTED_BEFORE_START
        finally:
            traced.abort()
        # every graph examined to the end, within the bound; what is left is said
        collector.store.finish(options.analysis_seconds)
        stats = collector.stats(session.decoder.counts())
        status = traced.status(started)
        stats["command_exit_status"] = status
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if address.scheme == "unix" else None
        processes = process_coverage(collector, options.lock_families, local)
        return TraceOutcome(collector_findings(collector, now, local=local), stats, status, ended_by,
                            list(collector.warnings), str(address), processes, report_notes)
