"""Lock functions beyond pthread's: the families, the declarations users
write, and finding them in real files of this machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from igdeadlock import gadget
from igdeadlock.host import lockfunctions as lf

GLIB = "/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0"
ABSL = "/usr/lib/x86_64-linux-gnu/libabsl_synchronization.so.20220623"


def write(tmp_path, document) -> str:
    path = tmp_path / "locks.yaml"
    path.write_text(yaml.safe_dump(document) if not isinstance(document, str) else document)
    return str(path)


def test_abseil_methods_match_every_inline_namespace():
    lock = lf._absl_method("4LockEv")
    assert lock("_ZN4absl5Mutex4LockEv")
    assert lock("_ZN4absl7debian35Mutex4LockEv")
    assert lock("_ZN4absl12lts_202206235Mutex4LockEv")
    assert not lock("_ZN4absl7debian35Mutex8LockSlowEPKNS0_6MuHowSEPKNS0_9ConditionEi")
    assert not lock("_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE")


def test_a_declaration_becomes_a_family(tmp_path):
    path = write(tmp_path, {"locks": [{"name": "pool lock", "library": "libpool.so.2",
                                        "lock": ["pool_lock", "pool_lock_v2"],
                                        "trylock": {"function": "pool_trylock", "argument": 2},
                                        "acquired": True, "unlock": "pool_unlock", "argument": 1,
                                        "any_releaser": True}]})
    (family,) = lf.load_declarations(path)
    assert family.name == "pool lock" and family.kind == gadget.LockKind.USER
    assert family.flags == gadget.LOCK_FLAG_ANY_RELEASER
    by_symbol = {f.symbol: f for f in family.functions}
    assert by_symbol["pool_lock"].argument == 1 and by_symbol["pool_lock_v2"].role == lf.LOCK
    assert by_symbol["pool_trylock"].argument == 2
    assert by_symbol["pool_trylock"].acquired_when == gadget.AcquiredWhen.TRUE
    assert by_symbol["pool_unlock"].role == lf.UNLOCK


@pytest.mark.parametrize("document,says", [
    ("locks: [", "not YAML"),
    ({"locks": []}, "non-empty list 'locks'"),
    ({"locks": [{"lock": "l", "unlock": "u"}]}, "'library' is missing"),
    ({"locks": [{"library": "x", "lock": "l"}]}, "needs an unlock"),
    ({"locks": [{"library": "x", "unlock": "u"}]}, "at least one of lock"),
    ({"locks": [{"library": "x", "lock": 3, "unlock": "u"}]}, "lock must be a function name"),
    ({"locks": [{"library": "/nonexistent/libx.so", "lock": "l", "unlock": "u"}]}, "No such file"),
    ({"locks": [{"library": GLIB, "lock": "g_mutex_lock", "unlock": "g_mutex_unlok"}]},
     "defines no function g_mutex_unlok (its unlock)"),
])
def test_bad_declarations_say_what_is_wrong(tmp_path, document, says):
    with pytest.raises(lf.DeclarationError) as error:
        lf.load_declarations(write(tmp_path, document))
    assert says in str(error.value)


def test_a_declared_library_path_that_defines_them_is_taken(tmp_path):
    (family,) = lf.load_declarations(write(tmp_path, {"locks": [
        {"library": GLIB, "lock": "g_mutex_lock", "trylock": "g_mutex_trylock", "unlock": "g_mutex_unlock"}]}))
    assert family.library == GLIB


def test_probes_carry_what_each_function_is():
    found = {f: 0x100 + i for i, f in enumerate(lf.CPYTHON_SEMAPHORE.functions)}
    probes = lf._probes(lf.CPYTHON_SEMAPHORE, found, "glibc")
    assert probes[0].program == gadget.UNLOCK_FUNCTION_PROGRAM  # releases first
    entry = {p.symbol: p for p in probes if not p.retprobe}
    returns = {p.symbol for p in probes if p.retprobe}
    # every acquisition of a semaphore any thread may release has a return probe
    assert returns == {"sem_wait", "sem_trywait", "sem_timedwait", "sem_clockwait"}
    trywait = entry["sem_trywait"].cookie
    assert (trywait >> gadget.COOKIE_KIND_SHIFT) & 0xFF == gadget.LockKind.SEMAPHORE
    assert (trywait >> gadget.COOKIE_HOW_SHIFT) & 3 == gadget.Acquire.TRY
    assert (trywait >> gadget.COOKIE_FLAGS_SHIFT) & gadget.LOCK_FLAG_WAIT_INTENT
    assert (trywait >> gadget.COOKIE_FLAGS_SHIFT) & gadget.LOCK_FLAG_ANY_RELEASER


def run_and_find(command, families):
    """Start a real process, stop it once its libraries are mapped, and find its lock functions."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        process.stdout.readline()  # it printed: its libraries are mapped
        return lf.LockFunctionFinder(families).for_process(process.pid, None, "glibc")
    finally:
        process.kill()
        process.wait()


def test_glib_functions_are_found_in_the_library_a_process_maps():
    code = "import ctypes, sys; ctypes.CDLL('libglib-2.0.so.0'); print('ready', flush=True); sys.stdin.read()"
    (target,) = run_and_find([sys.executable, "-c", code], [lf.GLIB])
    assert os.path.realpath(target.path) == os.path.realpath(GLIB)
    assert {p.symbol for p in target.probes} == {"g_mutex_lock", "g_mutex_trylock", "g_mutex_unlock", "g_mutex_clear"}


def test_cpython_semaphores_only_in_cpython_processes():
    cpython = "/usr/bin/python3.11"
    code = "import sys; print('ready', flush=True); sys.stdin.read()"
    families = [lf.CPYTHON_SEMAPHORE]
    # the C library's sem_* are probed for the process alone; the finder needs the process's library
    from igdeadlock.host.locklib import LockLibraryFinder
    process = subprocess.Popen([cpython, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        process.stdout.readline()
        library = LockLibraryFinder(["pthread_mutex_lock"]).for_process(process.pid).library
        (target,) = lf.LockFunctionFinder(families).for_process(process.pid, library, "glibc")
        assert target.per_process and target.file == library.file
        assert {p.symbol for p in target.probes} >= {"sem_wait", "sem_trywait", "sem_post"}
    finally:
        process.kill()
        process.wait()
    # a program that is no CPython: its semaphores count, they are no locks
    assert run_and_find(["sh", "-c", "echo ready; cat"], families) == []


def test_abseil_functions_are_found_by_their_mangled_names():
    code = ("import ctypes, sys; ctypes.CDLL('" + ABSL + "'); print('ready', flush=True); sys.stdin.read()")
    (target,) = run_and_find([sys.executable, "-c", code], [lf.ABSEIL])
    symbols = {p.symbol for p in target.probes}
    assert {"absl::Mutex 4LockEv", "absl::Mutex 6UnlockEv", "absl::Mutex 10ReaderLockEv"} <= symbols
