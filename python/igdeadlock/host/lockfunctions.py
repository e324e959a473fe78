"""Lock functions beyond the C library's pthread ones, found per process.

Many programs take no pthread lock at all: GLib's GMutex is futex-based, CPython
3.11 and 3.12 build threading.Lock on a POSIX semaphore (3.13 on PyMutex), and
Abseil's absl::Mutex sleeps on futexes of its own. Each such family is a list of
functions (which argument is the lock, how a try reports success) and where to
find them in a process: in any object it maps that defines them, or, for
CPython's semaphores, in the process's C library, and only in processes that
are CPython (other programs use semaphores to count, not to lock). Users
declare their own with --lock-functions (YAML, see ``load_declarations``).

The gadget serves them all with three programs (gadget.LOCK_FUNCTION_*), told
by each probe's cookie what the function is.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from igdeadlock.gadget import (
    DESTROY_FUNCTION_PROGRAM,
    LOCK_FLAG_ANY_RELEASER,
    LOCK_FLAG_RECURSIVE,
    LOCK_FLAG_WAIT_INTENT,
    LOCK_FLAG_WAITS_ELSEWHERE,
    LOCK_FUNCTION_PROGRAM,
    LOCK_FUNCTION_RETURN_PROGRAM,
    MAX_LOCK_ARGUMENT,
    UNLOCK_FUNCTION_PROGRAM,
    Acquire,
    AcquiredWhen,
    LockKind,
    LockMode,
    lock_function_cookie,
)
from igdeadlock.host.elf import STT_FUNC, ElfError, ElfFile
from igdeadlock.host.locklib import FileId, LockLibrary, MappedRegion, _real_identity, parse_maps
from igdeadlock.host.locklib import Inspected as _Inspected

LOCK, TRYLOCK, TIMEDLOCK, UNLOCK, DESTROY = "lock", "trylock", "timedlock", "unlock", "destroy"
ROLES = (LOCK, TRYLOCK, TIMEDLOCK, UNLOCK, DESTROY)
_HOW = {LOCK: Acquire.BLOCKING, TRYLOCK: Acquire.TRY, TIMEDLOCK: Acquire.TIMED}


class DeclarationError(ValueError):
    """A --lock-functions file that cannot be used; the message says why and where."""


@dataclass(frozen=True)
class LockFunction:
    """One function of a lock family."""

    symbol: str  # its name, or with ``match`` a function of symbol names -> True
    role: str  # LOCK, TRYLOCK, TIMEDLOCK or UNLOCK
    argument: int = 0  # which argument is the lock
    mode: int = LockMode.EXCLUSIVE
    acquired_when: int = AcquiredWhen.ZERO  # a try or timed one's result
    match: Optional[Callable[[str], bool]] = field(default=None, compare=False, hash=False)
    flags: int = 0  # gadget.LOCK_FLAG_* of this function, besides its family's

    def matches(self, name: str) -> bool:
        return self.match(name) if self.match is not None else name == self.symbol


@dataclass(frozen=True)
class LockFamily:
    name: str  # as reports say it: "GLib GMutex", "CPython threading.Lock (semaphore)", ...
    kind: int  # gadget.LockKind
    functions: Tuple[LockFunction, ...]
    flags: int = 0  # gadget.LOCK_FLAG_*
    # A family whose functions are the process's C library's: it applies to a
    # process only if one of its objects defines ``marker`` and none ``unless``.
    in_libc: bool = False
    marker: Optional[str] = None
    unless: Optional[str] = None
    # declared by a user: the file to look in (a path, or a file name matched
    # against each mapped object's name); built-in families look in every object
    library: Optional[str] = None
    # the library's other futex waits, which are no locks (its condition
    # variables): regular expressions on the waiting function's name
    waits: Tuple[str, ...] = ()

    @property
    def exact_symbols(self) -> List[str]:
        return [f.symbol for f in self.functions if f.match is None]


def _absl_method(suffix: str) -> Callable[[str], bool]:
    """absl::Mutex's method ``suffix`` (mangled, after "5Mutex"), in any of the
    inline namespaces Abseil builds use (lts_2022..., Debian's debian3, none)."""
    pattern = re.compile(r"_ZN4absl(?:\d+[A-Za-z_][A-Za-z0-9_]*?)?5Mutex" + re.escape(suffix))
    return lambda name: pattern.fullmatch(name) is not None


def _absl(suffix: str, role: str, mode: int = LockMode.EXCLUSIVE) -> LockFunction:
    return LockFunction(f"absl::Mutex {suffix}", role, 0, mode,
                        AcquiredWhen.TRUE if role == TRYLOCK else AcquiredWhen.ZERO, _absl_method(suffix))


SHARED = LockMode.SHARED
GLIB = LockFamily("GLib GMutex", LockKind.GMUTEX, (
    LockFunction("g_mutex_lock", LOCK),
    LockFunction("g_mutex_trylock", TRYLOCK, acquired_when=AcquiredWhen.TRUE),
    LockFunction("g_mutex_unlock", UNLOCK),
    LockFunction("g_mutex_clear", DESTROY),
), waits=(r"g_cond_wait(_until)?",))
# CPython 3.11, 3.12: threading.Lock and RLock's lock are semaphores of value 1
# (PyThread_acquire_lock_timed: sem_trywait, then sem_clockwait or sem_wait).
CPYTHON_SEMAPHORE = LockFamily("CPython threading.Lock (a semaphore)", LockKind.SEMAPHORE, (
    LockFunction("sem_wait", LOCK),
    # every acquisition tries first (with the GIL held), then waits: a
    # successful try is the acquisition the program asked for
    LockFunction("sem_trywait", TRYLOCK, flags=LOCK_FLAG_WAIT_INTENT),
    LockFunction("sem_timedwait", TIMEDLOCK),
    LockFunction("sem_clockwait", TIMEDLOCK),
    LockFunction("sem_post", UNLOCK),
    # a lock's semaphore is destroyed with it (PyThread_free_lock): its address names a new one after
    LockFunction("sem_destroy", DESTROY),
), flags=LOCK_FLAG_ANY_RELEASER, in_libc=True, marker="PyThread_acquire_lock_timed", unless="_PyMutex_LockTimed")
# CPython 3.13+: PyMutex; _PyMutex_LockTimed(m, timeout, flags) returns PY_LOCK_ACQUIRED (1). Its
# waits park on a per-thread semaphore, not on the lock.
CPYTHON_PYMUTEX = LockFamily("CPython PyMutex", LockKind.PYMUTEX, (
    LockFunction("_PyMutex_LockTimed", TIMEDLOCK, acquired_when=AcquiredWhen.ONE),
    LockFunction("_PyMutex_TryUnlock", UNLOCK),
), flags=LOCK_FLAG_WAITS_ELSEWHERE)
CPYTHON_RECURSIVE_MUTEX = LockFamily("CPython _PyRecursiveMutex", LockKind.PYMUTEX, (
    LockFunction("_PyRecursiveMutex_LockTimed", TIMEDLOCK, acquired_when=AcquiredWhen.ONE),
    LockFunction("_PyRecursiveMutex_Unlock", UNLOCK),
    LockFunction("_PyRecursiveMutex_TryUnlock", UNLOCK),
), flags=LOCK_FLAG_WAITS_ELSEWHERE | LOCK_FLAG_RECURSIVE)
# absl::Mutex: Lock and friends are out of line; a waiter sleeps on its own
# per-thread semaphore. LockWhen* always return holding the lock.
ABSEIL = LockFamily("Abseil absl::Mutex", LockKind.ABSL_MUTEX, (
    _absl("4LockEv", LOCK), _absl("4lockEv", LOCK),
    _absl("8LockWhenERKNS0_9ConditionE", LOCK),
    _absl("19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE", LOCK),
    _absl("20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE", LOCK),
    _absl("7TryLockEv", TRYLOCK), _absl("8try_lockEv", TRYLOCK),
    _absl("6UnlockEv", UNLOCK), _absl("6unlockEv", UNLOCK),
    _absl("10ReaderLockEv", LOCK, SHARED), _absl("11lock_sharedEv", LOCK, SHARED),
    _absl("14ReaderLockWhenERKNS0_9ConditionE", LOCK, SHARED),
    _absl("13ReaderTryLockEv", TRYLOCK, SHARED), _absl("15try_lock_sharedEv", TRYLOCK, SHARED),
    _absl("12ReaderUnlockEv", UNLOCK, SHARED), _absl("13unlock_sharedEv", UNLOCK, SHARED),
    _absl("D1Ev", DESTROY), _absl("D2Ev", DESTROY),
), flags=LOCK_FLAG_WAITS_ELSEWHERE,
   # a condition variable, an Await or a Notification sleeps on the thread's own semaphore
   waits=(r"absl::(\w+::)*(CondVar|Notification|synchronization_internal|base_internal)::.*",
          r"absl::(\w+::)*Mutex::(Await|AwaitCommon|AwaitWithTimeout|AwaitWithDeadline)\b.*"))
BUILT_IN_FAMILIES: Tuple[LockFamily, ...] = (GLIB, CPYTHON_SEMAPHORE, CPYTHON_PYMUTEX, CPYTHON_RECURSIVE_MUTEX,
                                             ABSEIL)


# --- user declarations ---------------------------------------------------------

_RESULTS = {"zero": AcquiredWhen.ZERO, "true": AcquiredWhen.TRUE, "nonzero": AcquiredWhen.TRUE,
            "one": AcquiredWhen.ONE}
_DECLARATION_KEYS = {"name", "library", "lock", "trylock", "timedlock", "unlock", "destroy", "argument", "acquired",
                     "recursive", "any_releaser", "shared_lock", "shared_trylock", "shared_unlock"}


def load_declarations(path: str) -> List[LockFamily]:
    """The lock families a --lock-functions file declares::

        locks:
          - name: my spinlock           # how reports name it (optional)
            library: /usr/lib/libmine.so.1   # or a file name (libmine.so.1, myprogram)
            lock: my_lock              # blocking acquisition; at least one of the
            trylock: my_trylock        #   acquisitions and the unlock are needed
            timedlock: my_timedlock
            unlock: my_unlock
            destroy: my_lock_destroy   # optional: the address names a new lock after it
            argument: 0                # which argument is the lock (0-4; default 0); a
                                       #   function may say its own: {function: f, argument: 1}
            acquired: zero             # how trylock/timedlock say they acquired:
                                       #   zero (default), true (a true bool), one
            recursive: false           # its holder may take it again
            any_releaser: false        # any thread may release it (a semaphore)

    A function may be a list of names (the first one a file defines is probed).
    A library given as a path must exist and define every function named."""
    try:
        with open(path) as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise DeclarationError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise DeclarationError(f"{path}: not YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("locks"), list) or not document["locks"]:
        raise DeclarationError(f"{path}: expected a mapping with a non-empty list 'locks'")
    families = []
    for index, entry in enumerate(document["locks"], 1):
        where = f"{path}: lock {index}"
        if not isinstance(entry, dict):
            raise DeclarationError(f"{where}: expected a mapping")
        unknown = set(entry) - _DECLARATION_KEYS
        if unknown:
            raise DeclarationError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                                   f"(known: {', '.join(sorted(_DECLARATION_KEYS))})")
        families.append(_declared_family(entry, where))
    return families


def _argument(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LOCK_ARGUMENT:
        raise DeclarationError(f"{where}: 'argument' must be 0 to {MAX_LOCK_ARGUMENT} (which argument is the lock)")
    return value


def _functions_of(value: object, where: str, key: str, argument: int) -> List[Tuple[str, int]]:
    """(name, argument) of each function a key names: a name, a list of names,
    or a mapping {function: NAME, argument: N} (a function of its own argument)."""
    items = value if isinstance(value, list) else [value]
    found: List[Tuple[str, int]] = []
    for item in items:
        if isinstance(item, dict):
            unknown = set(item) - {"function", "argument"}
            name = item.get("function")
            if unknown or not isinstance(name, str) or not name:
                raise DeclarationError(f"{where}: {key}: expected {{function: NAME, argument: N}}")
            found.append((name, _argument(item.get("argument", argument), f"{where}: {key}")))
        elif isinstance(item, str) and item:
            found.append((item, argument))
        else:
            raise DeclarationError(f"{where}: {key} must be a function name, a list of names, or "
                                   f"{{function: NAME, argument: N}}")
    if not found:
        raise DeclarationError(f"{where}: {key} names no function")
    return found


def _declared_family(entry: Mapping[str, object], where: str) -> LockFamily:
    library = entry.get("library")
    if not isinstance(library, str) or not library:
        raise DeclarationError(f"{where}: 'library' is missing: the executable or library that defines them")
    argument = _argument(entry.get("argument", 0), where)
    acquired = entry.get("acquired", "zero")
    if acquired is True:  # YAML reads a bare true as a boolean
        acquired = "true"
    if not isinstance(acquired, str) or acquired not in _RESULTS:
        raise DeclarationError(f"{where}: 'acquired' must be one of {', '.join(_RESULTS)}")
    functions: List[LockFunction] = []
    roles = {"lock": (LOCK, LockMode.EXCLUSIVE), "trylock": (TRYLOCK, LockMode.EXCLUSIVE),
             "timedlock": (TIMEDLOCK, LockMode.EXCLUSIVE), "unlock": (UNLOCK, LockMode.EXCLUSIVE),
             "destroy": (DESTROY, LockMode.EXCLUSIVE),
             "shared_lock": (LOCK, LockMode.SHARED), "shared_trylock": (TRYLOCK, LockMode.SHARED),
             "shared_unlock": (UNLOCK, LockMode.SHARED)}
    for key, (role, mode) in roles.items():
        if key in entry:
            for name, function_argument in _functions_of(entry[key], where, key, argument):
                functions.append(LockFunction(name, role, function_argument, mode, _RESULTS[str(acquired)]))
    if not any(f.role == UNLOCK for f in functions) or not any(f.role in (LOCK, TRYLOCK, TIMEDLOCK)
                                                               for f in functions):
        raise DeclarationError(f"{where}: needs an unlock and at least one of lock, trylock, timedlock")
    flags = (LOCK_FLAG_RECURSIVE if entry.get("recursive") else 0) | (
        LOCK_FLAG_ANY_RELEASER if entry.get("any_releaser") else 0)
    label = entry.get("name")
    family = LockFamily(str(label) if label else f"{os.path.basename(library)} lock", LockKind.USER,
                        tuple(functions), flags, library=library)
    if "/" in library:
        _check_declared_file(family, where)
    return family


def _check_declared_file(family: LockFamily, where: str) -> None:
    """A library named by its path must be there and define what is declared."""
    assert family.library is not None
    try:
        with ElfFile.map(family.library) as elf:
            defined = elf.find_symbols(family.exact_symbols)
    except OSError as exc:
        raise DeclarationError(f"{where}: {family.library}: {exc.strerror}") from exc
    except (ElfError, struct.error, IndexError) as exc:
        raise DeclarationError(f"{where}: {family.library} is no ELF file ({exc})") from exc
    by_role: Dict[Tuple[str, int], List[str]] = {}
    for f in family.functions:
        by_role.setdefault((f.role, f.mode), []).append(f.symbol)
    for (role, _mode), names in by_role.items():
        if not any(n in defined for n in names):
            raise DeclarationError(f"{where}: {family.library} defines no function {' or '.join(names)} "
                                   f"(its {role}): check the name (C++ names are mangled: see `nm -D`)")


# --- finding them in processes -----------------------------------------------

@dataclass(frozen=True)
class FunctionProbe:
    program: str
    offset: int  # in the file
    retprobe: bool
    cookie: int
    symbol: str


@dataclass(frozen=True)
class FunctionTarget:
    """One family's functions in one file, ready to probe."""

    family: LockFamily
    file: FileId
    open_path: str
    path: str
    probes: Tuple[FunctionProbe, ...]
    per_process: bool  # probed for the process alone (a C library's semaphores, an overlay's file)


@dataclass
class _FileFunctions:
    defined: Dict[str, Tuple[int, int]]  # symbol -> (file offset, type)
    names: Optional[List[str]] = None  # every function name, when a family matches by pattern


def _probes(family: LockFamily, found: Mapping[LockFunction, int], libc: str) -> Tuple[FunctionProbe, ...]:
    probes: List[FunctionProbe] = []
    for function, offset in found.items():
        if function.role == DESTROY:
            cookie = lock_function_cookie(libc, family.kind, function.argument, function.mode, Acquire.BLOCKING)
            probes.append(FunctionProbe(DESTROY_FUNCTION_PROGRAM, offset, False, cookie, function.symbol))
            continue
        if function.role == UNLOCK:
            cookie = lock_function_cookie(libc, family.kind, function.argument, function.mode,
                                          Acquire.BLOCKING, 0, family.flags)
            probes.append(FunctionProbe(UNLOCK_FUNCTION_PROGRAM, offset, False, cookie, function.symbol))
            continue
        how = _HOW[function.role]
        cookie = lock_function_cookie(libc, family.kind, function.argument, function.mode, how,
                                      function.acquired_when, family.flags | function.flags)
        probes.append(FunctionProbe(LOCK_FUNCTION_PROGRAM, offset, False, cookie, function.symbol))
        # a try or timed one's result tells whether it acquired; a blocking one
        # that sleeps elsewhere than on its lock ends its wait at its return,
        # and one any thread may release may be its holder's wait for a release
        if how != Acquire.BLOCKING or family.flags & (LOCK_FLAG_WAITS_ELSEWHERE | LOCK_FLAG_ANY_RELEASER):
            probes.append(FunctionProbe(LOCK_FUNCTION_RETURN_PROGRAM, offset, True, cookie, function.symbol))
    # release probes first: no acquisition is seen without them
    return tuple(sorted(probes, key=lambda p: p.program != UNLOCK_FUNCTION_PROGRAM))


class LockFunctionFinder:
    """Finds the lock families' functions in a process's mapped objects; parses each file once."""

    def __init__(self, families: Sequence[LockFamily] = BUILT_IN_FAMILIES) -> None:
        self.families = tuple(families)
        self._exact = sorted({s for f in self.families for s in f.exact_symbols}
                             | {f.marker for f in self.families if f.marker}
                             | {f.unless for f in self.families if f.unless})
        self._files: Dict[Tuple[FileId, int, int], _FileFunctions] = {}
        self.declared_seen: Dict[str, bool] = {f.name: False for f in self.families if f.kind == LockKind.USER}
        self.problems: List[str] = []  # declared functions missing from a file that should have them

    def _functions(self, path: str, expected: FileId, patterns: bool) -> Optional[_FileFunctions]:
        try:
            elf = ElfFile.map(path)
        except (OSError, ElfError):
            return None
        with elf:
            assert elf.stat is not None
            if FileId.of(elf.stat) != expected:
                return None
            key = (expected, elf.stat.st_size, elf.stat.st_mtime_ns)
            known = self._files.get(key)
            try:
                if known is None:
                    symbols = elf.find_symbols(self._exact, kinds=None)
                    known = self._files[key] = _FileFunctions({
                        name: (offset, symbol.type) for name, symbol in symbols.items()
                        if (offset := elf.vaddr_to_offset(symbol.value)) is not None})
                if patterns and known.names is None:
                    known.names = []
                    # decoding every symbol of a big program takes seconds: only
                    # where a string table names what the patterns look for
                    if not _string_tables_mention(elf, PATTERN_MARKER):
                        return known
                    for symbol in elf.symbols():
                        if symbol.type == STT_FUNC and "Mutex" in symbol.name:
                            offset = elf.vaddr_to_offset(symbol.value)
                            if offset is not None:
                                known.defined.setdefault(symbol.name, (offset, symbol.type))
                                known.names.append(symbol.name)
            except (ElfError, struct.error, IndexError):
                return None
            return known

    def for_process(self, pid: int, library: Optional[LockLibrary], libc: str) -> List[FunctionTarget]:
        """Every family's functions the process's objects define (its C library's,
        for families that live there and apply to it)."""
        try:
            with open(f"/proc/{pid}/maps") as handle:
                mapped = parse_maps(handle.read())
        except OSError:
            return []
        objects: Dict[FileId, MappedRegion] = {}
        for region in mapped:
            if region.path.startswith("/") and not region.deleted and region.file not in objects:
                objects[region.file] = region
        seen: Dict[FileId, Tuple[str, str, _FileFunctions]] = {}
        for file, region in objects.items():
            for path in (region.path, f"/proc/{pid}/root{region.path}", f"/proc/{pid}/map_files/{region.range}"):
                functions = self._functions(path, file, self._patterns_in(region.path))
                if functions is not None:
                    seen[file] = (region.path, path, functions)
                    break
        return self._targets(pid, seen, library, libc)

    def for_files(self, pid: int, paths: Iterable[str], library: Optional[LockLibrary],
                  libc: str) -> List[FunctionTarget]:
        """The same for a process about to run (stopped before its first
        instruction): the objects its loader will map, as this host names them."""
        seen: Dict[FileId, Tuple[str, str, _FileFunctions]] = {}
        for path in paths:
            try:
                file = FileId.of(os.stat(path))
            except OSError:
                continue
            functions = self._functions(path, file, self._patterns_in(path))
            if functions is not None and file not in seen:
                seen[file] = (os.path.realpath(path), path, functions)
        return self._targets(pid, seen, library, libc)

    def _patterns_in(self, path: str) -> bool:
        wants = any(fn.match is not None for f in self.families for fn in f.functions)
        return wants and _may_hold_patterns(path)

    def _targets(self, pid: int, seen: Mapping[FileId, Tuple[str, str, _FileFunctions]],
                 library: Optional[LockLibrary], libc: str) -> List[FunctionTarget]:
        defined_anywhere = {name for _, _, functions in seen.values() for name in functions.defined}
        targets: List[FunctionTarget] = []
        for family in self.families:
            if family.in_libc:
                if library is None or family.marker not in defined_anywhere or (
                        family.unless and family.unless in defined_anywhere):
                    continue
                libc_seen = seen.get(library.file)
                found = self._resolve(family, libc_seen[2] if libc_seen else None)
                if found:
                    targets.append(FunctionTarget(family, library.file, library.open_path, library.path,
                                                  _probes(family, found, libc), True))
                continue
            for file, (seen_as, path, functions) in seen.items():
                if family.library is not None and not _names_file(family.library, seen_as):
                    continue
                found = self._resolve(family, functions)
                if family.library is not None:
                    self._check_declared(family, seen_as, found)
                if not found or not any(f.role not in (UNLOCK, DESTROY) for f in found):
                    continue
                if family.kind == LockKind.USER:
                    self.declared_seen[family.name] = True
                real_file, open_path, per_process_only = _real_identity(pid, seen_as, _as_inspected(file, path))
                targets.append(FunctionTarget(family, real_file, open_path, seen_as,
                                              _probes(family, found, libc), per_process_only))
        return targets

    def _resolve(self, family: LockFamily, functions: Optional[_FileFunctions]) -> Dict[LockFunction, int]:
        """Each role's first function the file defines as a function."""
        if functions is None:
            return {}
        found: Dict[LockFunction, int] = {}
        taken_roles = set()
        for function in family.functions:
            if function.match is None and function.symbol in functions.defined and \
                    functions.defined[function.symbol][0] in found.values():
                continue  # another name of a function already probed (an alias)
            names = [function.symbol] if function.match is None else [
                n for n in (functions.names or []) if function.matches(n)]
            for name in names:
                entry = functions.defined.get(name)
                if entry is None or entry[1] != STT_FUNC or entry[0] in found.values():
                    continue
                if function.match is None and (function.role, function.mode, family.kind) in taken_roles \
                        and family.kind == LockKind.USER:
                    break  # a list of names: the first the file defines
                found[function] = entry[0]
                taken_roles.add((function.role, function.mode, family.kind))
                break
        return found

    def _check_declared(self, family: LockFamily, path: str, found: Mapping[LockFunction, int]) -> None:
        roles = {(f.role, f.mode) for f in family.functions}
        missing = sorted(role for role, _ in roles - {(f.role, f.mode) for f in found})
        if missing:
            problem = (f"--lock-functions: {path} defines no {' nor '.join(missing)} function of "
                       f"'{family.name}' ({', '.join(f.symbol for f in family.functions if f.role in missing)})")
            if problem not in self.problems:
                self.problems.append(problem)


# What every function matched by pattern has in its name (absl::Mutex's methods).
PATTERN_MARKER = b"_ZN4absl"


def _string_tables_mention(elf: ElfFile, text: bytes) -> bool:
    for name in (".dynstr", ".strtab"):
        section = elf.section(name)
        if section is not None and text in elf.read(section.offset, section.size):
            return True
    return False


def _may_hold_patterns(path: str) -> bool:
    """Objects worth a full symbol scan for functions matched by pattern
    (absl::Mutex): Abseil's own libraries, and programs (which may link it in)."""
    name = os.path.basename(path)
    return "absl" in name or ".so" not in name


def _names_file(library: str, path: str) -> bool:
    if "/" in library:
        return os.path.realpath(library) == os.path.realpath(path) or library == path
    return os.path.basename(path) == library or os.path.basename(path).startswith(library + ".")


def _as_inspected(file: FileId, path: str) -> "_Inspected":
    return _Inspected(file, path, None, None)  # type: ignore[arg-type]


def family_names(families: Iterable[LockFamily]) -> List[str]:
    return [f.name for f in families]


def known_waits(families: Iterable[LockFamily]) -> Optional["re.Pattern[str]"]:
    """One pattern for the functions whose futex waits the families' libraries
    make without a lock (their condition variables), or None."""
    patterns = [p for f in families for p in f.waits]
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
