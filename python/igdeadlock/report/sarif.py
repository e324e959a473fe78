"""SARIF 2.1.0: a result per finding, the rule its kind, locations from the
symbolized frames; suppressed findings carry a suppression."""

from __future__ import annotations

import json
import pathlib
from typing import Dict, List, Optional

from igdeadlock import __version__
from igdeadlock.analysis.lockorder import POTENTIAL_DEADLOCK, SINGLE_THREAD_INVERSION
from igdeadlock.analysis.misuse import EXIT_HOLDING_LOCK, MISUSES, RELOCK_HELD, UNLOCK_NOT_HELD, UNLOCK_NOT_OWNER
from igdeadlock.analysis.waitfor import ACTUAL_DEADLOCK, ALL_THREADS_BLOCKED
from igdeadlock.gadget import LockKind
from igdeadlock.records import Frame
from igdeadlock.report.model import (
    FindingView,
    RenderOptions,
    Report,
    hex_address,
    lock_label,
    lock_names,
    signature,
    where,
)

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://inspektor-gadget.io/"


_RULES = {
    ACTUAL_DEADLOCK: ("Threads are deadlocked: each waits for a lock the next one holds.", "error"),
    POTENTIAL_DEADLOCK: ("Lock-order inversion: distinct threads take locks in an order that can deadlock.",
                         "error"),
    SINGLE_THREAD_INVERSION: ("Lock-order inversion within one thread: it deadlocks once as many threads as the "
                              "cycle has locks run it.", "warning"),
    RELOCK_HELD: ("A thread requests a lock it already holds: it hangs, or fails with EDEADLK.", "error"),
    UNLOCK_NOT_OWNER: ("A thread unlocks a lock that another thread holds.", "error"),
    UNLOCK_NOT_HELD: ("A thread unlocks a lock that nobody holds: it was unlocked once more than it was locked.",
                      "error"),
    EXIT_HOLDING_LOCK: ("A thread exited holding a lock: the next thread to wait for it waits forever.", "error"),
    ALL_THREADS_BLOCKED: ("Every thread of the process waits (locks, condition variables, joins) and no "
                          "timeout ends any of the waits: the process hangs.", "error"),
}


def _message(f: FindingView) -> str:
    names = lock_names(f)
    place = f" in {where(f)}" if where(f) else ""
    if f.kind in MISUSES:
        text = f"{_RULES[f.kind][0]} Lock: {names[f.locks[0]]} ({hex_address(f.locks[0][0])}); " \
               f"threads {', '.join(map(str, f.threads))}; pid {f.pid} ({f.comm}){place}."
        return text
    if f.kind == ALL_THREADS_BLOCKED:
        waits = "; ".join(f"thread {w.tid} on {'futex' if w.kind == LockKind.FUTEX else names[w.waits_for]} "
                          f"({hex_address(w.waits_for[0])})" for w in f.waits)
        return f"{_RULES[f.kind][0]} Waits: {waits}; pid {f.pid} ({f.comm}){place}."
    ring = " => ".join(f"{names[lock]} ({hex_address(lock[0])})" for lock in f.locks) + f" => {names[f.locks[0]]}"
    text = f"{_RULES.get(f.kind, (f.kind,))[0]} Cycle: {ring}; threads {', '.join(map(str, f.threads))}; " \
           f"pid {f.pid} ({f.comm}){place}."
    if f.suppressed:
        text += f" Not a deadlock: {f.suppressed}."
    return text


def _uri(path: str) -> str:
    """Absolute paths become file: URIs (SARIF's relative references must not start with /)."""
    return pathlib.PurePosixPath(path).as_uri() if path.startswith("/") else path


def _sarif_location(frame: Frame, message: Optional[str] = None) -> Optional[Dict[str, object]]:
    """A SARIF location for a symbolized frame with a source line (None without one)."""
    if frame.source_file is None or frame.line is None:
        return None
    location: Dict[str, object] = {
        "physicalLocation": {
            "artifactLocation": {"uri": _uri(frame.source_file)},
            "region": {"startLine": frame.line},
        },
    }
    if frame.function:
        location["logicalLocations"] = [{"fullyQualifiedName": frame.function, "kind": "function"}]
    if message:
        location["message"] = {"text": message}
    return location


def _first_located(frames: Optional[List[Frame]]) -> Optional[Frame]:
    for frame in frames or []:
        if frame.source_file and frame.line:
            return frame
    return None


def sarif_document(report: Report) -> Dict[str, object]:
    rules = [
        {
            "id": kind,
            "name": kind.title().replace("-", ""),
            "shortDescription": {"text": description},
            "defaultConfiguration": {"level": level},
            "helpUri": INFORMATION_URI,
        }
        for kind, (description, level) in _RULES.items()
    ]
    results = []
    for f in report.findings:
        level = _RULES.get(f.kind, ("", "warning"))[1]
        locations: List[Dict[str, object]] = []
        related: List[Dict[str, object]] = []
        for e in f.edges:
            acquired = _first_located(e.to_stack)
            held = _first_located(e.from_stack)
            what = (f"thread {e.tid} waits for {lock_label(f, e.to_lock)} holding {lock_label(f, e.from_lock)}"
                    if f.kind == ACTUAL_DEADLOCK else
                    f"thread {e.tid} acquires {lock_label(f, e.to_lock)} while holding {lock_label(f, e.from_lock)}")
            location = _sarif_location(acquired, what) if acquired is not None else None
            if location is not None:
                (locations if not locations else related).append(location)
            location = _sarif_location(held, f"thread {e.tid} acquired {lock_label(f, e.from_lock)} here") \
                if held is not None else None
            if location is not None:
                related.append(location)
        for w in f.waits if f.kind == ALL_THREADS_BLOCKED else ():
            waiting = _first_located(w.stack)
            location = _sarif_location(waiting, f"thread {w.tid} waits here") if waiting is not None else None
            if location is not None:
                (locations if not locations else related).append(location)
        for index, location in enumerate(related):
            location["id"] = index  # type: ignore[index]
        result: Dict[str, object] = {
            "ruleId": f.kind,
            "level": level,
            "message": {"text": _message(f)},
            "partialFingerprints": {"igdeadlockSignature/v1": signature(f)},
            "properties": {
                "id": f.id,
                "pid": f.pid,
                "comm": f.comm,
                "threads": list(f.threads),
                "mutexes": [hex_address(lock[0]) for lock in f.locks],
                "node": f.node,
                "namespace": f.namespace,
                "pod": f.pod,
                "container": f.container,
                "container_id": f.container_id,
                "related": f.related,
            },
        }
        if locations:
            result["locations"] = locations
        if related:
            result["relatedLocations"] = related
        if f.suppressed:
            result["suppressions"] = [{"kind": "external", "justification": f.suppressed}]
        results.append(result)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "igdeadlock", "version": __version__, "semanticVersion": __version__,
                                "informationUri": INFORMATION_URI, "rules": rules}},
            "results": results,
            "properties": {"stats": report.stats, "targets": report.targets},
        }],
    }


def render_sarif(report: Report) -> str:
    return json.dumps(sarif_document(report), indent=2) + "\n"


def render(report: Report, options: RenderOptions) -> str:
    return render_sarif(report)
