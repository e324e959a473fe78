"""The layers: the analysis and the reports know neither gRPC nor the wire
(ig/) nor the host (host/); the wire knows nothing about deadlocks; the host
knows nothing of the analysis; findings.py, between them and the commands,
runs no gadget; session.py runs the gadget and makes no findings."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "igdeadlock"
PURE = ("analysis", "report")  # no I/O layers below them
FORBIDDEN_FOR_PURE = ("grpc", "google.protobuf", "igdeadlock.ig", "igdeadlock.host", "igdeadlock.session",
                      "igdeadlock.trace", "igdeadlock.watch", "igdeadlock.cli")
FORBIDDEN_FOR_WIRE = ("igdeadlock.analysis", "igdeadlock.report", "igdeadlock.host", "igdeadlock.session")
COMMANDS = ("igdeadlock.session", "igdeadlock.trace", "igdeadlock.watch", "igdeadlock.cli")
FORBIDDEN_FOR_HOST = ("igdeadlock.analysis", "igdeadlock.report", "igdeadlock.findings") + COMMANDS
FORBIDDEN_FOR_FINDINGS = ("igdeadlock.ig",) + COMMANDS
# what findings.py took over from session.py: a gadget run does not make findings
MOVED_TO_FINDINGS = ("collector_findings", "process_coverage", "untraced_wait_site", "python_frames",
                     "learn_wait_stack", "learn_code_locations", "_place", "_C_LIBRARY_FILE",
                     "_SYSCALL_FUNCTION", "MAX_UNTRACED_SITES_NAMED", "UNLOCATED_CODE")
SESSION_USERS = ("trace.py", "watch.py", "cli.py")  # the commands that run the gadget (and bench/)


def imported_modules(path: Path) -> Iterator[str]:
    """Every module a file imports, anywhere in it (TYPE_CHECKING blocks too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def violations(layer: str, forbidden: tuple) -> Set[str]:
    found = set()
    paths = [PACKAGE / layer] if layer.endswith(".py") else sorted((PACKAGE / layer).rglob("*.py"))
    for path in paths:
        if "proto" in path.parts:
            continue
        for module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.add(f"{path.relative_to(PACKAGE)} imports {module}")
    return found


def defined_names(path: Path) -> Set[str]:
    """The functions, classes and variables a module defines at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("layer", PURE)
def test_analysis_and_reports_import_no_wire_no_host(layer):
    assert violations(layer, FORBIDDEN_FOR_PURE) == set()


def test_the_wire_layer_knows_nothing_about_deadlocks():
    assert violations("ig", FORBIDDEN_FOR_WIRE) == set()


def test_the_host_layer_knows_nothing_of_the_analysis():
    assert violations("host", FORBIDDEN_FOR_HOST) == set()


def test_findings_run_no_gadget():
    assert (PACKAGE / "findings.py").is_file()
    assert violations("findings.py", FORBIDDEN_FOR_FINDINGS) == set()


def test_a_gadget_run_makes_no_findings():
    session = PACKAGE / "session.py"
    assert defined_names(session) & set(MOVED_TO_FINDINGS) == set()
    assert violations("session.py", ("igdeadlock.report", "igdeadlock.findings")) == set()
    assert set(MOVED_TO_FINDINGS) <= defined_names(PACKAGE / "findings.py")


def test_only_the_commands_run_the_gadget():
    users = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
             if any(m == "igdeadlock.session" or m.startswith("igdeadlock.session.") for m in imported_modules(path))}
    assert users <= set(SESSION_USERS)


def test_nothing_takes_findings_from_the_session():
    """trace, watch, the tests and the benchmark import what makes findings from findings.py."""
    top = PACKAGE.parents[1]
    takers = set()
    for path in sorted(p for d in ("python", "tests", "bench", "tools") for p in (top / d).rglob("*.py")):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "igdeadlock.session":
                takers.update(f"{path.relative_to(top)} takes {a.name}" for a in node.names
                              if a.name in MOVED_TO_FINDINGS or a.name == "keeper_of")
    assert takers == set()


def test_loading_the_analysis_and_the_reports_loads_no_grpc():
    code = ("import sys, igdeadlock.analysis.collector, igdeadlock.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' "
            "or m.startswith(('igdeadlock.ig', 'igdeadlock.host'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
