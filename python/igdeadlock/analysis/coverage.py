"""Which processes were traced, and why the others were not.

A deadlock detector must never report "no deadlock" about a process it did not
see: every process in scope is listed with the lock library that was probed for
it, or with the reason none could be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, Dict, List, Optional, Tuple

# Why a process that produced no lock events may still have been traced, on a
# target whose probes ig attached (the client cannot tell which library it used).
UNKNOWN_ON_REMOTE = "no lock events seen; ig attached the probes, so its C library is not known here"


@dataclass
class ProcessCoverage:
    """One process in scope: what was probed for it, or why nothing was."""

    pid: int
    process_start: int  # boot-clock ns, as the gadget's records carry it
    comm: str = ""
    exe: str = ""
    mntns_id: int = 0
    library: Optional[str] = None  # the lock library probed (path as the process sees it)
    flavor: Optional[str] = None  # "glibc" or "musl"
    static: bool = False  # the library is the executable itself
    traced: bool = False
    reason: Optional[str] = None  # why not traced
    lock_events: bool = False  # records arrived from it
    limits: List[str] = field(default_factory=list)  # limits reached that can hide a finding in it
    # lock implementations its files contain that are not traced: (what, file as it sees it)
    untraced_code: List[Tuple[str, str]] = field(default_factory=list)
    target: str = ""  # the gadget service it was seen through (set in multi-target reports)

    def to_json(self) -> Dict[str, object]:
        return {
            "target": self.target,
            "pid": self.pid,
            "process_start": self.process_start,
            "comm": self.comm,
            "exe": self.exe,
            "mntns_id": self.mntns_id,
            "library": self.library,
            "flavor": self.flavor,
            "static": self.static,
            "traced": self.traced,
            "reason": None if self.traced else self.reason,
            "limits": list(self.limits),
            "untraced_lock_code": [{"implementation": what, "file": file} for what, file in self.untraced_code],
        }


# Process start times from /proc are in clock ticks; the gadget's are in ns.
_START_SLACK_NS = 20_000_000


class CoverageTable:
    """Processes seen on one target, keyed by (pid, start time). Pure data."""

    def __init__(self) -> None:
        self._by_pid: Dict[int, List[ProcessCoverage]] = {}

    def entry(self, pid: int, process_start: int) -> ProcessCoverage:
        """The entry of this process, made if new. Start times match within a few
        clock ticks, since /proc gives them in ticks."""
        entries = self._by_pid.setdefault(pid, [])
        for existing in entries:
            if abs(existing.process_start - process_start) <= _START_SLACK_NS or not process_start \
                    or not existing.process_start:
                if not existing.process_start:
                    existing.process_start = process_start
                return existing
        created = ProcessCoverage(pid, process_start)
        entries.append(created)
        return created

    def clear_limits(self) -> None:
        """Limits are worked out again at each report; what its code holds is
        kept, and said first."""
        for entries in self._by_pid.values():
            for entry in entries:
                entry.limits = [untraced_code_limit(entry.untraced_code)] if entry.untraced_code else []

    def latest(self, pid: int) -> ProcessCoverage:
        """The most recent process of this pid (made if none was seen)."""
        entries = self._by_pid.get(pid)
        if not entries:
            return self.entry(pid, 0)
        return max(entries, key=lambda e: e.process_start)

    def probed(self, pid: int, process_start: int, comm: str, exe: str, library: Optional[str],
               flavor: Optional[str], static: bool, reason: str, mntns_id: int = 0) -> ProcessCoverage:
        """What the client found for a process: its lock library, or why none."""
        entry = self.entry(pid, process_start)
        entry.comm = comm or entry.comm
        entry.exe = exe or entry.exe
        entry.mntns_id = mntns_id or entry.mntns_id
        if library is not None:
            entry.library, entry.flavor, entry.static = library, flavor, static
            entry.traced, entry.reason = True, None
        elif not entry.traced:
            entry.reason = reason
        return entry

    def seen(self, pid: int, process_start: int, comm: str = "", exe: str = "", mntns_id: int = 0
             ) -> ProcessCoverage:
        """A process the gadget told about (an exec, say), whatever is known of it."""
        entry = self.entry(pid, process_start)
        entry.comm = comm or entry.comm
        entry.exe = exe or entry.exe
        entry.mntns_id = mntns_id or entry.mntns_id
        return entry

    def lock_events_from(self, pid: int, process_start: int, comm: str, mntns_id: int) -> None:
        """Lock records came from the process: it was traced, whatever else is known."""
        entry = self.seen(pid, process_start, comm, mntns_id=mntns_id)
        entry.lock_events = True
        entry.traced, entry.reason = True, None

    def processes(self, probes_known: bool) -> List[ProcessCoverage]:
        """Every process, oldest first. ``probes_known``: this client placed the
        probes, so a process without a reason yet was simply never inspected."""
        result = sorted((e for entries in self._by_pid.values() for e in entries),
                        key=lambda e: (e.process_start, e.pid))
        for entry in result:
            if not entry.traced and entry.reason is None and not probes_known:
                entry.reason = UNKNOWN_ON_REMOTE
        return result

    def counts(self, namespaces: Optional[AbstractSet[int]] = None) -> Tuple[int, int]:
        """(traced, untraced) processes (only those in these mount namespaces, if given)."""
        entries = [e for entries in self._by_pid.values() for e in entries
                   if namespaces is None or e.mntns_id in namespaces]
        traced = sum(1 for e in entries if e.traced)
        return traced, len(entries) - traced


def untraced_code_limit(code: List[Tuple[str, str]]) -> str:
    """The limit of a process whose files hold locks igdeadlock does not trace."""
    return ("its code has locks igdeadlock does not trace: " +
            "; ".join(f"{what} (in {file})" for what, file in code) +
            ": locks taken there are not seen, so no deadlock among them is ruled out")
