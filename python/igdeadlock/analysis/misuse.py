"""Misuses of a lock that hang a program or leave it broken without a cycle:
a thread that requests a non-recursive lock it already holds (a self-deadlock,
or EDEADLK the program may ignore), one that unlocks a lock another thread
holds, one that unlocks a lock nobody holds (unlocked once more than it was
locked), one that exits holding a lock (whoever waits for it next waits forever).
The gadget sees each as it happens; this keeps one finding per lock and thread.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from igdeadlock.analysis.lockorder import LockId, ProcessKey
from igdeadlock.gadget import Misuse
from igdeadlock.records import MisuseEvent

RELOCK_HELD = "relock-held"
UNLOCK_NOT_OWNER = "unlock-not-owner"
EXIT_HOLDING_LOCK = "exit-holding-lock"
UNLOCK_NOT_HELD = "unlock-not-held"
MISUSE_KINDS: Dict[int, str] = {Misuse.RELOCK_HELD: RELOCK_HELD, Misuse.UNLOCK_NOT_OWNER: UNLOCK_NOT_OWNER,
                                Misuse.UNLOCK_NOT_HELD: UNLOCK_NOT_HELD, Misuse.EXIT_HOLDING: EXIT_HOLDING_LOCK}
MISUSES = tuple(MISUSE_KINDS.values())  # every misuse kind, as reports name them


@dataclass(frozen=True)
class LockMisuse:
    """One misuse of ``lock`` by thread ``tid`` (the first time it was seen)."""

    process: ProcessKey
    comm: str
    mntns_id: int
    kind: str  # one of MISUSE_KINDS' values
    tid: int
    lock: LockId
    lock_kind: int
    mode: int  # how it was requested (relock-held); how it was held otherwise
    held_mode: int
    site: int  # where it happened (0: no stack)
    held_site: int  # where the thread took the lock (0: unknown)
    owner_tid: int  # the thread holding it (unlock-not-owner), 0 if unknown

    @property
    def key(self) -> Tuple[ProcessKey, str, LockId, int]:
        return (self.process, self.kind, self.lock, self.tid)


class MisuseTracker:
    """Misuse events -> one finding per (process, kind, lock, thread)."""

    def __init__(self) -> None:
        self.findings: Dict[Tuple[ProcessKey, str, LockId, int], LockMisuse] = {}

    def add(self, event: MisuseEvent) -> Optional[LockMisuse]:
        """The finding the event makes, if it is new."""
        kind = MISUSE_KINDS.get(event.misuse)
        if kind is None:
            return None
        misuse = LockMisuse(ProcessKey(event.pid, event.process_start), event.comm, event.mntns_id, kind,
                            event.tid, (event.lock, event.gen), event.kind, event.mode, event.held_mode,
                            event.site, event.held_site, event.owner_tid)
        if misuse.key in self.findings:
            return None
        self.findings[misuse.key] = misuse
        return misuse

    def all_findings(self) -> List[LockMisuse]:
        return sorted(self.findings.values(), key=lambda m: (m.process, m.kind, m.lock, m.tid))
