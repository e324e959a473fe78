"""Command line: ``igdeadlock trace [OPTIONS] -- COMMAND [ARG...]``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import List, Optional, Sequence

from igdeadlock import __version__
from igdeadlock.report import render_json, render_text
from igdeadlock.session import DEFAULT_IMAGE, TraceError, TraceOptions, trace_command, tune_garbage_collector
from igdeadlock.wire import TlsConfig

FORMATS = ("text", "json")

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


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
                    "(or --timeout passes), report lock-order cycles.",
    )
    trace.add_argument("--remote", metavar="ADDR",
                       help="gadget service address: unix:///path or tcp://host:port "
                            "(default: the local ig daemon, or a private one started for this run)")
    trace.add_argument("--format", choices=FORMATS, default="text", help="report format (default: text)")
    trace.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    trace.add_argument("--timeout", type=_positive, metavar="SECONDS",
                       help="stop after SECONDS, terminating COMMAND")
    trace.add_argument("--show-suppressed", action="store_true",
                       help="text report: also show cycles that are not deadlocks, with the reason")
    trace.add_argument("--stop-on-deadlock", action="store_true",
                       help="end the trace (terminating COMMAND) as soon as threads are deadlocked")
    trace.add_argument("--exit-code", action="store_true",
                       help="exit with status 1 when a potential deadlock is found")
    trace.add_argument("--image", default=DEFAULT_IMAGE, help=f"gadget image (default: {DEFAULT_IMAGE})")
    trace.add_argument("--attach", choices=("auto", "client", "ig"), default="auto",
                       help="who attaches the uprobes: ig, this client (needed on kernels without kprobes), "
                            "or auto (default)")
    trace.add_argument("--fetch-interval", type=int, default=250, metavar="MS",
                       help="how often the gadget's maps are read, in milliseconds (default: 250)")
    trace.add_argument("--ig", metavar="PATH", help="ig binary for the private daemon (default: ig on PATH)")
    trace.add_argument("--daemon-log", metavar="FILE", help="keep the private daemon's log in FILE")
    trace.add_argument("--tls-ca", metavar="FILE", help="CA certificate that signed the daemon's certificate")
    trace.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    trace.add_argument("--tls-key", metavar="FILE", help="client key (mutual TLS)")
    trace.add_argument("--tls-server-name", metavar="NAME", help="name expected in the daemon's certificate")
    trace.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    return parser


def _tls(args: argparse.Namespace) -> Optional[TlsConfig]:
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


def run_trace(args: argparse.Namespace) -> int:
    command: List[str] = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _say("igdeadlock trace: no command given: igdeadlock trace [OPTIONS] -- COMMAND [ARG...]")
        return EXIT_ERROR
    # A machine-readable report owns stdout; the command's output goes to stderr.
    command_stdout = sys.stderr.fileno() if args.format != "text" and args.output is None else None
    options = TraceOptions(
        command=command,
        image=args.image,
        remote=args.remote,
        tls=_tls(args),
        timeout=args.timeout,
        fetch_interval_ms=args.fetch_interval,
        attach=args.attach,
        ig=args.ig,
        daemon_log=args.daemon_log,
        command_stdout=command_stdout,
        stop_on_deadlock=args.stop_on_deadlock,
    )
    # SIGTERM ends the trace like Ctrl-C: the report is still written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        outcome = trace_command(options, _say)
    except (TraceError, ValueError, OSError) as exc:
        _say(f"igdeadlock: {exc}")
        return EXIT_ERROR
    for note in outcome.notes:
        _say(f"igdeadlock: ig: {note}")
    if outcome.ended_by == "timeout":
        _say(f"igdeadlock: --timeout reached after {args.timeout:g}s; the command was terminated")
    elif outcome.ended_by == "deadlock":
        _say("igdeadlock: stopped at the deadlock (--stop-on-deadlock); the command was terminated")
    elif outcome.ended_by == "interrupt":
        _say("igdeadlock: interrupted; the command was terminated")
    if args.format == "json":
        text = render_json(outcome.findings, outcome.stats)
    else:
        text = render_text(outcome.findings, outcome.stats, show_suppressed=args.show_suppressed)
    _write(text, args.output)
    found = any(f.kind in ("potential-deadlock", "actual-deadlock") and not f.suppressed
                for f in outcome.findings)
    return EXIT_FINDINGS if args.exit_code and found else EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_garbage_collector()
    if args.command == "trace":
        return run_trace(args)
    parser.print_help(sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
