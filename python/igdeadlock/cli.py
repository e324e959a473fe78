"""Command line: ``igdeadlock trace [OPTIONS] -- COMMAND``, ``igdeadlock watch [OPTIONS]`` and
``igdeadlock snapshot [OPTIONS]``."""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

from igdeadlock import DEFAULT_IMAGE, __version__
from igdeadlock.host.command import check_command
from igdeadlock.host.locklib import CommandError

# The rest (gRPC, the analysis) loads only once the arguments and COMMAND are
# known to be good: a mistyped command is told at once.
if TYPE_CHECKING:
    from igdeadlock.ig.daemon import PrivateDaemon
    from igdeadlock.ig.k8s import PortForward
    from igdeadlock.ig.service import Address, TlsConfig
    from igdeadlock.report.model import Report
    from igdeadlock.trace import TraceOutcome
    from igdeadlock.watch import TargetSpec, Watch

FORMATS = ("text", "json", "sarif", "dot", "mermaid", "html")  # the renderers of igdeadlock.report

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C
CONTAINER_NAME_PARAM = "operator.LocalManager.containername"
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _not_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or a positive number of seconds")
    return value


def _pid(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a process id (a positive number)")
    return value


def _add_common(parser: argparse.ArgumentParser, tracing: bool = True) -> None:
    output = parser.add_argument_group("report")
    output.add_argument("--format", choices=FORMATS, default="text", help="report format (default: text)")
    output.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    output.add_argument("--show-suppressed", action="store_true",
                        help="also show cycles that are not deadlocks, with the reason (text, graphs, HTML)")
    output.add_argument("--suppressions", metavar="FILE", action="append", default=[],
                        help="YAML rules for findings judged not to matter (by function, file or signature); "
                             "they are listed as suppressed with reason user (repeat for several files)")
    output.add_argument("--baseline", metavar="REPORT.json",
                        help="an earlier JSON report: its findings are listed as suppressed with reason user, "
                             "so only new ones count")
    output.add_argument("--exit-code", action="store_true",
                        help="exit with status 1 when an actual or potential deadlock is found" +
                        ("" if tracing else ", or a process whose every thread hangs"))
    gadget = parser.add_argument_group("gadget")
    gadget.add_argument("--image", default=DEFAULT_IMAGE, help=f"gadget image (default: {DEFAULT_IMAGE})")
    gadget.add_argument("--ig", metavar="PATH", help="ig binary for a private daemon (default: ig on PATH)")
    gadget.add_argument("--daemon-log", metavar="FILE", help="keep a private daemon's log in FILE")
    if tracing:
        _add_tracing(gadget)
    tls = parser.add_argument_group("TLS to remote daemons")
    tls.add_argument("--tls-ca", metavar="FILE", help="CA certificate that signed the daemon's certificate")
    tls.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    tls.add_argument("--tls-key", metavar="FILE", help="client key (mutual TLS)")
    tls.add_argument("--tls-server-name", metavar="NAME", help="name expected in the daemon's certificate")


def _add_tracing(gadget: argparse._ArgumentGroup) -> None:
    """The options of lock-order tracing (trace, watch)."""
    gadget.add_argument("--fetch-interval", type=int, default=None, metavar="MS",
                        help="how often the gadget's maps are read, in milliseconds")
    gadget.add_argument("--attach", choices=("auto", "client", "ig"), default="auto",
                        help="who attaches the uprobes: ig, this client (needed on kernels without kprobes; "
                             "local daemons only), or auto (default)")
    gadget.add_argument("--unlock-checks", action="store_true",
                        help="also probe pthread_mutex_unlock in glibc, to report unlocks of a mutex another "
                             "thread holds (unlock-not-owner); costs a second probe hit per lock/unlock pair. "
                             "Without it glibc mutexes are known released from the owner glibc records in them "
                             "(musl's unlocks are always probed). Only where this client attaches the probes")
    gadget.add_argument("--lock-functions", metavar="FILE", action="append", default=[],
                        help="YAML: your own lock, trylock and unlock functions, traced like pthread's (see "
                             "README, Your own lock functions); repeat for several files. Only where this "
                             "client attaches the probes")
    gadget.add_argument("--snapshot-interval", type=_not_negative, default=2.0, metavar="SECONDS",
                        help="take a blocked-thread snapshot this often, from the start: hangs that began "
                             "before tracing are found too (0: none; default: 2)")


def _add_targets(parser: argparse.ArgumentParser, verb: str) -> None:
    """Where to look: daemons, a Kubernetes cluster's gadget pods, one container."""
    parser.add_argument("--remote", metavar="ADDR", action="append", default=[],
                        help="an ig daemon: unix:///path or tcp://host:port (repeat for several)")
    parser.add_argument("--k8s", action="store_true", help=f"{verb} every gadget pod of a kubectl-gadget deployment")
    parser.add_argument("--context", metavar="C", help="kubeconfig context (--k8s)")
    parser.add_argument("--namespace", metavar="N", help="only pods in this namespace (--k8s; default: all)")
    parser.add_argument("--pod", metavar="P", help="only this pod (--k8s)")
    parser.add_argument("--node", metavar="NODE", action="append", default=[],
                        help="only the gadget pods on these nodes (--k8s; repeat for several)")
    parser.add_argument("--container", metavar="NAME",
                        help=f"ig daemons: {verb} only the container(s) of this name (IG's filter, in the kernel)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igdeadlock",
        description="Find deadlocks in running programs with Inspektor Gadget and eBPF.",
    )
    parser.add_argument("--version", action="version", version=f"igdeadlock {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    trace = commands.add_parser(
        "trace",
        help="run a command under the deadlock gadget and report its lock-order problems",
        description="Run COMMAND (and its process tree) under the igdeadlock gadget; when it exits "
                    "(or --timeout passes), report lock-order cycles and deadlocks.",
    )
    trace.add_argument("--remote", metavar="ADDR",
                       help="gadget service address: unix:///path or tcp://host:port "
                            "(default: the local ig daemon, or a private one started for this run)")
    trace.add_argument("--timeout", type=_positive, metavar="SECONDS",
                       help="stop after SECONDS, terminating COMMAND")
    trace.add_argument("--stop-on-deadlock", action="store_true",
                       help="end the trace (terminating COMMAND) as soon as threads are deadlocked, or every "
                            "thread of a process has hung (see --hang-time)")
    trace.add_argument("--hang-time", type=_positive, default=10.0, metavar="SECONDS",
                       help="report all-threads-blocked when every thread of a process has waited this long "
                            "in futex waits: locks, condition variables, joins (default: 10)")
    trace.add_argument("--analysis-time", type=_positive, default=120.0, metavar="SECONDS",
                       help="at most this long to examine what is left of the lock-order graphs once "
                            "COMMAND ended; anything not examined is named in the report (default: 120)")
    trace.add_argument("--pid", type=_pid, metavar="PID",
                       help="trace this running process (and the processes it starts from now on) instead of "
                            "a COMMAND, until it exits, --timeout or Ctrl-C; a snapshot first reports a hang "
                            "already in progress")
    _add_common(trace)
    trace.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")

    watch = commands.add_parser(
        "watch",
        help="watch ig daemons or a Kubernetes cluster and report deadlocks as they are found",
        description="Stream from every target at once, print new findings as they come with a status line, "
                    "and write the report at the end (--duration, or Ctrl-C).",
    )
    _add_targets(watch, "watch")
    watch.add_argument("--containers-only", action="store_true",
                       help="ig daemons: trace containers only, not host processes")
    watch.add_argument("--hangs-only", action="store_true",
                       help="trace no lock: diagnose hangs from blocked-thread snapshots alone (every "
                            "--snapshot-interval), at next to no cost; potential deadlocks are not looked for")
    watch.add_argument("--duration", type=_positive, metavar="SECONDS", help="stop after SECONDS")
    watch.add_argument("--hang-time", type=_positive, default=10.0, metavar="SECONDS",
                       help="report all-threads-blocked when every thread of a process has waited this long "
                            "in futex waits: locks, condition variables, joins (default: 10)")
    watch.add_argument("--analysis-time", type=_positive, default=120.0, metavar="SECONDS",
                       help="at the end, at most this long to examine what is left of each target's "
                            "lock-order graphs; anything not examined is named in the report (default: 120)")
    watch.add_argument("--status-interval", type=_positive, default=5.0, metavar="SECONDS",
                       help="how often the status line is printed (default: 5)")
    _add_common(watch)

    snapshot = commands.add_parser(
        "snapshot",
        help="report the deadlocks and hangs of processes that are stuck now, tracing nothing (like jstack)",
        description="Read every thread waiting in a futex now, the lock it waits for and that lock's owner, "
                    "twice, --interval apart: threads blocked in a cycle in both are deadlocked, a process "
                    "whose every thread waits is hung. Nothing is traced before, so a hang that began before "
                    "igdeadlock started is reported; a deadlock that has not happened yet is not looked for.",
    )
    snapshot.add_argument("--pid", type=_pid, metavar="PID", action="append", default=[],
                          help="only this process (repeat for several; default: every process of the host)")
    _add_targets(snapshot, "look at")
    snapshot.add_argument("--interval", type=_positive, default=0.5, metavar="SECONDS",
                          help="between the two snapshots (default: 0.5)")
    snapshot.add_argument("--hang-time", type=_positive, default=10.0, metavar="SECONDS",
                          help="report all-threads-blocked when every thread of a process has waited this long "
                               "(default: 10)")
    snapshot.add_argument("--timeout", type=_positive, default=60.0, metavar="SECONDS",
                          help="give up on targets whose snapshots have not come by then (default: 60)")
    _add_common(snapshot, tracing=False)
    snapshot.set_defaults(containers_only=False, fetch_interval=None, attach="ig", unlock_checks=False,
                          lock_functions=[])
    return parser


def _tls(args: argparse.Namespace) -> Optional["TlsConfig"]:
    from igdeadlock.ig.service import TlsConfig

    if not any((args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)):
        return None
    return TlsConfig(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write(text: str, path: Optional[str]) -> None:
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def load_judgements(args: argparse.Namespace) -> Optional[str]:
    """Read --suppressions and --baseline into args (before anything starts);
    the error, in one sentence, if one cannot be used."""
    import json

    import yaml

    from igdeadlock.report.suppressions import SuppressionError, parse_baseline, parse_suppressions

    args.suppression_rules, args.baseline_signatures = [], set()
    try:
        for path in args.suppressions:
            with open(path) as handle:
                args.suppression_rules += parse_suppressions(yaml.safe_load(handle), path)
        if args.baseline:
            with open(args.baseline) as handle:
                args.baseline_signatures = parse_baseline(json.load(handle), args.baseline)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        if isinstance(exc, SuppressionError):
            return str(exc)
        return f"cannot use {getattr(exc, 'filename', None) or 'a suppressions or baseline file'}: {exc}"
    return None


def judged(args: argparse.Namespace, findings: list) -> list:
    """The findings, with those the user's suppressions or baseline name suppressed."""
    from igdeadlock.report.suppressions import apply_suppressions

    if not args.suppression_rules and not args.baseline_signatures:
        return findings
    return apply_suppressions(findings, args.suppression_rules, args.baseline_signatures,
                              f"the baseline {args.baseline}")


def render(report: "Report", fmt: str, show_suppressed: bool) -> str:
    from igdeadlock.report import RenderOptions
    from igdeadlock.report import render as render_report

    return render_report(report, fmt, RenderOptions(show_suppressed=show_suppressed))


def _found_deadlock(report: "Report") -> bool:
    return any(f.kind in ("potential-deadlock", "actual-deadlock") and not f.suppressed for f in report.findings)


def trace_command_line(args: argparse.Namespace) -> Optional[List[str]]:
    """COMMAND of ``trace``, or None (said why) when it cannot run: told before
    anything is loaded or started."""
    command: List[str] = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if args.pid is not None:
        if command:
            _say("igdeadlock trace: give a COMMAND or --pid, not both")
            return None
        return []
    if not command:
        _say("igdeadlock trace: no command given: igdeadlock trace [OPTIONS] -- COMMAND [ARG...]")
        return None
    try:
        check_command(command)
    except CommandError as exc:
        _say(f"igdeadlock: {exc}")
        return None
    return command


def run_trace(args: argparse.Namespace) -> int:
    command = args.command_line
    from igdeadlock.session import TraceError
    from igdeadlock.trace import INTERRUPTED_BEFORE_START, TraceOptions, TraceOutcome, trace_command

    # A machine-readable report owns stdout; the command's output goes to stderr.
    command_stdout = sys.stderr.fileno() if args.format != "text" and args.output is None else None
    options = TraceOptions(
        command=command,
        image=args.image,
        remote=args.remote,
        tls=_tls(args),
        timeout=args.timeout,
        fetch_interval_ms=args.fetch_interval or TraceOptions.fetch_interval_ms,
        attach=args.attach,
        ig=args.ig,
        daemon_log=args.daemon_log,
        command_stdout=command_stdout,
        stop_on_deadlock=args.stop_on_deadlock,
        analysis_seconds=args.analysis_time,
        hang_seconds=args.hang_time,
        unlock_checks=args.unlock_checks,
        pid=args.pid,
        snapshot_interval=args.snapshot_interval,
    )
    try:
        options.lock_families = _lock_families(args)
        outcome = trace_command(options, _say)
    except KeyboardInterrupt:  # before trace_command could take it
        outcome = TraceOutcome([], {}, None, INTERRUPTED_BEFORE_START)
    except (TraceError, ValueError, OSError) as exc:  # DeclarationError is a ValueError
        _say(f"igdeadlock: {exc}")
        return EXIT_ERROR
    return finish_trace(args, outcome)


def _lock_families(args: argparse.Namespace) -> list:
    """The lock families to trace: the built-in ones and those --lock-functions declares."""
    from igdeadlock.host.lockfunctions import BUILT_IN_FAMILIES, load_declarations

    declared = [family for path in args.lock_functions for family in load_declarations(path)]
    return [*BUILT_IN_FAMILIES, *declared]


def interrupted_trace(args: argparse.Namespace) -> int:
    """Ctrl-C before tracing began: the report says nothing was traced."""
    from igdeadlock.trace import INTERRUPTED_BEFORE_START, TraceOutcome

    return finish_trace(args, TraceOutcome([], {}, None, INTERRUPTED_BEFORE_START))


def finish_trace(args: argparse.Namespace, outcome: "TraceOutcome") -> int:
    """Say how the trace ended and write its report; the exit status."""
    from igdeadlock.trace import INTERRUPTED_BEFORE_START

    for note in outcome.notes:
        _say(f"igdeadlock: ig: {note}")
    ended = f"process {args.pid} was left running" if args.pid is not None else "the command was terminated"
    if outcome.ended_by == "timeout":
        _say(f"igdeadlock: --timeout reached after {args.timeout:g}s; {ended}")
    elif outcome.ended_by == "deadlock":
        _say(f"igdeadlock: stopped at the deadlock (--stop-on-deadlock); {ended}")
    elif outcome.ended_by == "interrupt":
        _say(f"igdeadlock: interrupted; {ended}")
    report = outcome.report
    report.findings = judged(args, report.findings)
    if outcome.ended_by == INTERRUPTED_BEFORE_START:
        _say("igdeadlock: interrupted before the command started: nothing was traced")
        report.notes.append("interrupted before the command started: nothing was traced")
    _write(render(report, args.format, args.show_suppressed), args.output)
    if outcome.ended_by == INTERRUPTED_BEFORE_START:
        return EXIT_INTERRUPTED
    return EXIT_FINDINGS if args.exit_code and _found_deadlock(report) else EXIT_OK


def _reach(address: "Address") -> Callable[[], "Address"]:
    """How to reach a daemon at a fixed address: nothing to set up."""
    return lambda: address


def _processes_of(forward: "PortForward") -> Callable[[], List[int]]:
    """The processes of this host in the gadget pod a port-forward goes to now."""
    from igdeadlock.host.procfs import container_pids

    return lambda: container_pids(forward.pod.container_ids)


def watch_targets(args: argparse.Namespace, private: List["PrivateDaemon"]) -> List["TargetSpec"]:
    """The targets of a watch: remote daemons, gadget pods, or the local daemon."""
    from igdeadlock.host import procfs
    from igdeadlock.ig.daemon import PrivateDaemon, find_ig
    from igdeadlock.ig.k8s import PortForward, gadget_pods, kube_manager_params
    from igdeadlock.ig.service import DEFAULT_DAEMON_ADDRESS, parse_address
    from igdeadlock.session import gadget_params, local_daemon_answers
    from igdeadlock.watch import TargetSpec

    interval = args.fetch_interval or 1000
    params = gadget_params(interval, args.image, host=not (args.containers_only or args.container))
    if args.container:
        params[CONTAINER_NAME_PARAM] = args.container
    tls = _tls(args)
    specs: List[TargetSpec] = []
    for text in args.remote:
        address = parse_address(text)
        # a unix socket, or tcp on the loopback: the daemon's programs are on this host
        local = address.scheme == "unix" or address.location.rpartition(":")[0] in LOOPBACK
        specs.append(TargetSpec(str(address), _reach(address), params, tls, node=socket.gethostname() if local
                                else "", local=local))
    if args.k8s:
        k8s_params = {"operator.oci.ebpf.map-fetch-interval": f"{interval}ms"}
        k8s_params.update(kube_manager_params(args.namespace, args.pod))
        for pod in gadget_pods(args.context, args.node):
            forward = PortForward(pod, args.context)
            # A gadget pod on this host loads its programs into this kernel: the
            # client can attach their uprobes where ig cannot (no kprobes), and
            # knows them as the ones the pod's processes hold.
            specs.append(TargetSpec(pod.node or pod.name, forward.connect, k8s_params, None, node=pod.node,
                                    close=forward.close, local=bool(procfs.container_pids(pod.container_ids)),
                                    containers_only=True,
                                    server_pids=_processes_of(forward)))
    if not specs:
        default = parse_address(DEFAULT_DAEMON_ADDRESS)
        if not local_daemon_answers(default):
            daemon = PrivateDaemon(find_ig(args.ig), log_path=args.daemon_log)
            default = daemon.start()
            private.append(daemon)
        specs.append(TargetSpec(str(default), _reach(default), params, None, node=socket.gethostname(),
                                local=True))
    return specs


def run_watch(args: argparse.Namespace) -> int:
    if args.k8s is False and (args.context or args.namespace or args.pod or args.node):
        _say("igdeadlock watch: --context, --namespace, --pod and --node need --k8s")
        return EXIT_ERROR
    if args.hangs_only and not args.snapshot_interval:
        _say("igdeadlock watch: --hangs-only finds hangs in snapshots: --snapshot-interval must not be 0")
        return EXIT_ERROR
    from igdeadlock.ig.daemon import DaemonError
    from igdeadlock.ig.k8s import KubernetesError
    from igdeadlock.report.text import render_finding
    from igdeadlock.watch import Watch

    private: List["PrivateDaemon"] = []
    live_out = sys.stdout if args.format == "text" and args.output is None else sys.stderr
    try:
        families = _lock_families(args)
        specs = watch_targets(args, private)
    except (KubernetesError, DaemonError, ValueError, OSError, KeyboardInterrupt) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        _say("igdeadlock: interrupted before watching started: nothing was traced" if interrupted
             else f"igdeadlock: {exc}")
        for daemon in private:
            daemon.stop()
        return EXIT_INTERRUPTED if interrupted else EXIT_ERROR
    watch = Watch(specs, args.image, args.attach, _say, analysis_seconds=args.analysis_time,
                  hang_seconds=args.hang_time, unlock_checks=args.unlock_checks, lock_families=families,
                  hangs_only=args.hangs_only, snapshot_interval=args.snapshot_interval)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    next_status = time.monotonic() + args.status_interval
    watch.start()
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                view = watch.found.get(timeout=0.2)
            except Exception:  # queue.Empty
                view = None
            if view is not None:
                (view,) = judged(args, [view])
            if view is not None and (args.show_suppressed or not view.suppressed):
                live_out.write(render_finding(view))
                live_out.flush()
            if time.monotonic() >= next_status:
                _say(watch.status_line())
                next_status = time.monotonic() + args.status_interval
    except KeyboardInterrupt:
        _say("igdeadlock: interrupted; writing the report")
    report = stopped_report(watch, private, args)
    never = [t for t in report.targets if not t["connects"]]
    for target in never:
        # what was never traced is named: its silence is not "no deadlock"
        report.notes.append(f"target {target['address']} was never traced: {target['error'] or target['state']}")
    _say(watch.status_line())
    _write(render(report, args.format, args.show_suppressed), args.output)
    if never and len(never) == len(report.targets):
        _say("igdeadlock: no target was ever traced, so this report covers nothing")
        return EXIT_ERROR
    return EXIT_FINDINGS if args.exit_code and _found_deadlock(report) else EXIT_OK


def stopped_report(watch: "Watch", private: List["PrivateDaemon"], args: argparse.Namespace) -> "Report":
    """Stop every target (and the private daemons), then their report, judged."""
    try:
        watch.stop()
    finally:
        for daemon in private:
            daemon.stop()
    report = watch.report()
    report.findings = judged(args, report.findings)
    return report


def snapshot_pids(args: argparse.Namespace) -> Optional[List[int]]:
    """The processes --pid names that can be looked at, each other one said
    why not; None when --pid named some and none can."""
    from igdeadlock.host.procfs import why_not_a_user_process

    kept = []
    for pid in dict.fromkeys(args.pid):
        why = why_not_a_user_process(pid)
        if why is None:
            kept.append(pid)
        else:
            _say(f"igdeadlock snapshot: {why}: left out")
    return kept if kept or not args.pid else None


def run_snapshot(args: argparse.Namespace) -> int:
    if args.k8s is False and (args.context or args.namespace or args.pod or args.node):
        _say("igdeadlock snapshot: --context, --namespace, --pod and --node need --k8s")
        return EXIT_ERROR
    pids = snapshot_pids(args)
    if pids is None:
        _say("igdeadlock snapshot: none of the processes given can be looked at")
        return EXIT_ERROR
    from igdeadlock.ig.daemon import DaemonError
    from igdeadlock.ig.k8s import KubernetesError
    from igdeadlock.watch import Watch

    private: List["PrivateDaemon"] = []
    try:
        specs = watch_targets(args, private)
    except (KubernetesError, DaemonError, ValueError, OSError) as exc:
        _say(f"igdeadlock: {exc}")
        for daemon in private:
            daemon.stop()
        return EXIT_ERROR
    watch = Watch(specs, args.image, "ig", _say, hang_seconds=args.hang_time, hangs_only=True,
                  snapshot_interval=args.interval, snapshot_pids=pids)
    deadline = time.monotonic() + args.timeout
    watch.start()
    try:
        # two snapshots from every target (a deadlock is one still there at the second)
        while watch.snapshots_taken() < 2 and time.monotonic() < deadline:
            if watch.settled() and all(t["state"] != "connected" for t in (r.describe() for r in watch.runners)):
                break  # no target could be reached
            time.sleep(0.05)
    except KeyboardInterrupt:
        _say("igdeadlock: interrupted; writing what the snapshots showed")
    report = stopped_report(watch, private, args)
    for runner in watch.runners:
        taken = runner.collector.waits.snapshots
        target = runner.spec.label
        if taken < 2:
            state = runner.describe()
            why = f": {state['error']}" if state["error"] else ""
            report.notes.append(f"target {target}: {taken} snapshot(s) of the 2 needed to confirm a deadlock{why}")
    report.notes.append(
        "a snapshot of the threads waiting now, twice: lock order was not traced, so a deadlock that has not "
        "happened yet is not looked for (igdeadlock trace or watch find those)")
    _write(render(report, args.format, args.show_suppressed), args.output)
    if all(r.collector.waits.snapshots == 0 for r in watch.runners):
        _say("igdeadlock: no snapshot could be taken, so this report covers nothing")
        return EXIT_ERROR
    hung = any(f.kind == "all-threads-blocked" and not f.suppressed for f in report.findings)
    return EXIT_FINDINGS if args.exit_code and (_found_deadlock(report) or hung) else EXIT_OK


def tune_garbage_collector() -> None:
    """Collect cyclic garbage less often: the companion makes millions of small
    tuples and dictionaries that hold no reference cycles, and frequent young
    collections over them cost more than the analysis (measured by make bench)."""
    gc.set_threshold(100_000, 50, 100)


# What each command needs loaded before it runs.
_MODULES = {
    "trace": ("igdeadlock.trace", "igdeadlock.report"),
    "watch": ("igdeadlock.watch", "igdeadlock.ig.k8s", "igdeadlock.report"),
    "snapshot": ("igdeadlock.watch", "igdeadlock.ig.k8s", "igdeadlock.report"),
}


def main(argv: Optional[Sequence[str]] = None, interrupted: Callable[[], bool] = lambda: False) -> int:
    """``interrupted``: whether Ctrl-C came while Python was still starting (see
    __main__); it then counts as Ctrl-C before anything was traced."""
    parser = build_parser()
    args = parser.parse_args(argv)
    commands: dict = {"trace": run_trace, "watch": run_watch, "snapshot": run_snapshot}
    handler: Optional[Callable[[argparse.Namespace], int]] = commands.get(args.command)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    if args.command == "trace":
        args.command_line = trace_command_line(args)
        if args.command_line is None:
            return EXIT_ERROR
    problem = load_judgements(args)
    if problem is not None:
        _say(f"igdeadlock: {problem}")
        return EXIT_ERROR
    tune_garbage_collector()
    # Ctrl-C (and SIGTERM, which ends a run like it) while the modules load is
    # kept, not raised in the middle of an import.
    signals: List[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: signals.append(number))
    for module in _MODULES[args.command]:
        importlib.import_module(module)
    # From here they end a trace or a watch, and the report is still written.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        if interrupted() or signals:
            raise KeyboardInterrupt
        return handler(args)
    except KeyboardInterrupt:  # before or between the steps that handle it themselves
        if args.command == "trace":
            return interrupted_trace(args)
        _say("igdeadlock: interrupted before anything was traced")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
