"""The layers: the analysis and the reports know neither gRPC nor the wire
(ig/) nor the host (host/); the wire knows nothing about deadlocks."""

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
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        if "proto" in path.parts:
            continue
        for module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.add(f"{path.relative_to(PACKAGE)} imports {module}")
    return found


@pytest.mark.parametrize("layer", PURE)
def test_analysis_and_reports_import_no_wire_no_host(layer):
    assert violations(layer, FORBIDDEN_FOR_PURE) == set()


def test_the_wire_layer_knows_nothing_about_deadlocks():
    assert violations("ig", FORBIDDEN_FOR_WIRE) == set()


def test_loading_the_analysis_and_the_reports_loads_no_grpc():
    code = ("import sys, igdeadlock.analysis.collector, igdeadlock.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' "
            "or m.startswith(('igdeadlock.ig', 'igdeadlock.host'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
