"""Lock code no probe sees, recognised in files (host/lockcode.py): compiled
here, with the names and strings the real implementations leave."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers import BIN_CACHE
from igdeadlock.host.elf import ElfFile
from igdeadlock.host.lockcode import LockCodeScanner, lock_code_in

RUST_MUTEX = "Rust std's futex-based Mutex/RwLock"
# std::sys::sync::mutex::futex::Mutex::lock_contended, as rustc's legacy mangling writes it
LEGACY_NAME = "_ZN3std3sys4sync5mutex5futex5Mutex14lock_contended17h0123456789abcdefE"


def build(name: str, source: str, *flags: str) -> Path:
    out = BIN_CACHE / f"lockcode-{name}"
    src = out.with_suffix(".c")
    BIN_CACHE.mkdir(parents=True, exist_ok=True)
    src.write_text(source)
    subprocess.run(["cc", "-O0", "-o", str(out), str(src), *flags], check=True)
    return out


def found(path: Path) -> list:
    with ElfFile.map(str(path)) as elf:
        return lock_code_in(elf)


def test_a_function_named_like_rusts_contended_lock():
    path = build("named", f'void f(void) __asm__("{LEGACY_NAME}");\nvoid f(void) {{}}\nint main(void) {{ f(); }}\n')
    assert found(path) == [RUST_MUTEX]


def test_a_stripped_file_by_its_strings():
    path = build("stripped", 'const char *where = "/rustc/0/library/std/src/sys/sync/mutex/futex.rs";\n'
                 'int main(void) { return where[0] == 0; }\n', "-s")
    assert found(path) == [RUST_MUTEX]


def test_the_same_strings_in_a_file_with_symbols_are_no_proof():
    """A program with a .symtab names its lock functions: a string alone (a
    path in a message) is not the code."""
    path = build("mention", 'const char *where = "library/std/src/sys/sync/";\n'
                 'int main(void) { return where[0] == 0; }\n')
    assert found(path) == []


def test_a_plain_c_program_has_none():
    assert found(build("plain", "int main(void) { return 0; }\n")) == []


def test_a_process_is_read_from_its_mappings_and_each_file_once():
    path = build("running", f'void f(void) __asm__("{LEGACY_NAME}");\nvoid f(void) {{}}\n'
                 '#include <stdio.h>\n#include <unistd.h>\n'
                 'int main(void) { f(); puts("mapped"); fflush(stdout); pause(); }\n')
    scanner = LockCodeScanner()
    process = subprocess.Popen([str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "mapped\n"  # its exec is done: its files are mapped
        for _ in range(2):
            (code,) = scanner.in_process(process.pid)
            assert (code.implementation, code.file) == (RUST_MUTEX, os.path.realpath(path))
        assert len(scanner._files) >= 1
    finally:
        process.kill()
        process.wait()
    # gone: the files it was known to map
    (code,) = scanner.in_process(process.pid, (str(path),))
    assert code.file == str(path)
