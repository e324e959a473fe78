"""Python stacks: the CPython layout the gadget walks frames with, checked
against the installed CPython's own headers, and the line table decoded as
CPython decodes it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from igdeadlock.host import python as pyframes
from igdeadlock.records import python_line

DEBIAN_PYTHON = "/usr/bin/python3.11"
HEADERS = "/usr/include/python3.11"

# layout field -> the C expression of its offset (CPython 3.11's internal headers)
OFFSETS = {
    "interpreters_head": "offsetof(_PyRuntimeState, interpreters.head)",
    "tstate_current": "offsetof(_PyRuntimeState, gilstate.tstate_current)",
    "threads_head": "offsetof(PyInterpreterState, threads.head)",
    "tstate_next": "offsetof(PyThreadState, next)",
    "native_thread_id": "offsetof(PyThreadState, native_thread_id)",
    "cframe": "offsetof(PyThreadState, cframe)",
    "current_frame": "offsetof(_PyCFrame, current_frame)",
    "frame_code": "offsetof(_PyInterpreterFrame, f_code)",
    "frame_previous": "offsetof(_PyInterpreterFrame, previous)",
    "frame_prev_instr": "offsetof(_PyInterpreterFrame, prev_instr)",
    "code_adaptive": "offsetof(PyCodeObject, co_code_adaptive)",
    "co_filename": "offsetof(PyCodeObject, co_filename)",
    "co_qualname": "offsetof(PyCodeObject, co_qualname)",
    "co_firstlineno": "offsetof(PyCodeObject, co_firstlineno)",
    "co_linetable": "offsetof(PyCodeObject, co_linetable)",
    "ascii_size": "sizeof(PyASCIIObject)",
    "unicode_state": "offsetof(PyASCIIObject, state)",
    "bytes_size": "offsetof(PyVarObject, ob_size)",
    "bytes_data": "offsetof(PyBytesObject, ob_sval)",
}


def test_the_3_11_layout_is_cpythons_own(tmp_path):
    source = tmp_path / "offsets.c"
    source.write_text("#define Py_BUILD_CORE 1\n#include <Python.h>\n#include <internal/pycore_runtime.h>\n"
                      "#include <internal/pycore_interp.h>\n#include <internal/pycore_frame.h>\n#include <stdio.h>\n"
                      "#include <stddef.h>\nint main(void) {\n" +
                      "".join(f'  printf("{name} %zu\\n", {expression});\n' for name, expression in OFFSETS.items()) +
                      "  return 0;\n}\n")
    binary = tmp_path / "offsets"
    subprocess.run(["gcc", f"-I{HEADERS}", "-o", str(binary), str(source)], check=True)
    printed = dict(line.split() for line in subprocess.run([str(binary)], check=True, capture_output=True,
                                                          text=True).stdout.splitlines())
    layout = pyframes.LAYOUTS[(3, 11)]
    assert {name: getattr(layout, name) for name in OFFSETS} == {name: int(v) for name, v in printed.items()}


def lines_of(function):
    """instruction (2-byte unit) -> line, as CPython itself tells (co_lines)."""
    lines = {}
    for start, end, line in function.__code__.co_lines():
        for unit in range(start // 2, end // 2):
            lines[unit] = line
    return lines


def sample(a, b):
    total = 0
    for i in range(a):
        if i % 2:
            total += (
                i * b
            )
        else:
            total -= 1
    return total


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the line-table format of the interpreter under test")
@pytest.mark.parametrize("function", [sample, lines_of, test_the_3_11_layout_is_cpythons_own])
def test_the_line_table_is_decoded_as_cpython_decodes_it(function):
    code = function.__code__
    expected = lines_of(function)
    assert expected
    for unit, line in expected.items():
        if line is not None:
            assert python_line(code.co_linetable, code.co_firstlineno, unit) == line, (function.__name__, unit)


def test_the_layout_is_found_in_a_debian_cpython_process():
    process = subprocess.Popen([DEBIAN_PYTHON, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        found = pyframes.python_process(process.pid)
    finally:
        process.kill()
        process.wait()
    assert found is not None and found.version == (3, 11) and found.layout is pyframes.CPYTHON_3_11
    assert found.runtime and found.runtime % 8 == 0
    assert len(found.layout.pack(found.runtime)) == 48  # struct python_layout
    # a process that is no CPython has none
    other = subprocess.Popen(["sleep", "30"])  # Popen returns once the exec is done
    try:
        assert pyframes.python_process(other.pid) is None
    finally:
        other.kill()
        other.wait()
