"""The versioned JSON report (``igdeadlock/report/v3``)."""

from __future__ import annotations

import json
from typing import Dict, List, Optional

from igdeadlock.analysis.waitfor import ACTUAL_DEADLOCK, ALL_THREADS_BLOCKED
from igdeadlock.gadget import ACQUIRE_NAMES, LOCK_KIND_NAMES, LOCK_MODE_NAMES
from igdeadlock.records import Frame
from igdeadlock.report.model import ClusterFinding, FindingView, RenderOptions, Report, hex_address, signature

SCHEMA = "igdeadlock/report/v3"


def _frames_json(frames: Optional[List[Frame]]) -> Optional[List[Dict[str, object]]]:
    return None if frames is None else [f.to_json() for f in frames]


def finding_to_json(f: FindingView) -> Dict[str, object]:
    out: Dict[str, object] = {
        "id": f.id,
        "signature": signature(f),
        "kind": f.kind,
        "suppressed": f.suppressed,
        "suppressed_by": f.suppressed_by,
        "pid": f.pid,
        "comm": f.comm,
        "mntns_id": f.mntns_id,
        "target": f.target,
        "node": f.node,
        "namespace": f.namespace,
        "pod": f.pod,
        "container": f.container,
        "container_id": f.container_id,
        "first_seen": f.first_seen,
        "last_seen": f.last_seen,
        "mutexes": [hex_address(lock) for lock, _ in f.locks],
        "generations": [gen for _, gen in f.locks],
        "lock_kinds": [LOCK_KIND_NAMES.get(k, str(k)) for k in f.lock_kinds],
        "threads": list(f.threads),
        "gate_locks": [hex_address(lock) for lock, _ in f.gate_locks],
        "edges": [
            {
                "from": hex_address(e.from_lock[0]),
                "to": hex_address(e.to_lock[0]),
                "tid": e.tid,
                "comm": e.comm,
                "from_mode": LOCK_MODE_NAMES.get(e.from_mode, str(e.from_mode)),
                "to_mode": LOCK_MODE_NAMES.get(e.to_mode, str(e.to_mode)),
                "acquire": ACQUIRE_NAMES.get(e.how, str(e.how)),
                "held": [hex_address(lock) for lock, _ in e.held],
                "from_stack": _frames_json(e.from_stack),
                "to_stack": _frames_json(e.to_stack),
            }
            for e in f.edges
        ],
        "related": f.related,
    }
    if f.kind in (ACTUAL_DEADLOCK, ALL_THREADS_BLOCKED):
        out["blocked"] = [
            {
                "tid": w.tid,
                "comm": w.comm,
                "waits_for": hex_address(w.waits_for[0]),
                "mode": LOCK_MODE_NAMES.get(w.mode, str(w.mode)),
                "holds": hex_address(w.holds[0]),
                "held_by": w.held_by,
                "owner_tid": w.owner_tid or None,
                "blocked_for_seconds": None if w.blocked_for is None else round(w.blocked_for, 3),
                "wait_kind": LOCK_KIND_NAMES.get(w.kind, str(w.kind)),  # "futex": no lock, a futex word
                "held": [hex_address(lock) for lock, _ in w.held],
                "stack": _frames_json(w.stack),
            }
            for w in f.waits
        ]
    return out


def cluster_to_json(c: ClusterFinding) -> Dict[str, object]:
    first = [o.first_seen for o in c.occurrences if o.first_seen is not None]
    last = [o.last_seen for o in c.occurrences if o.last_seen is not None]
    return {
        "signature": c.signature,
        "kind": c.representative.kind,
        "suppressed": c.representative.suppressed,
        "finding": c.representative.id,
        "nodes": sorted({o.node or o.target for o in c.occurrences}),
        "pods": sorted({f"{o.namespace}/{o.pod}" for o in c.occurrences if o.pod}),
        "first_seen": min(first) if first else None,
        "last_seen": max(last) if last else None,
        "occurrences": [o.__dict__ for o in c.occurrences],
    }


def report_to_json(report: Report) -> Dict[str, object]:
    return {
        "schema": SCHEMA,
        "findings": [finding_to_json(f) for f in report.findings],
        "clusters": [cluster_to_json(c) for c in report.clusters],
        "targets": report.targets,
        "processes": [p.to_json() for p in report.processes],
        "notes": list(report.notes),
        "stats": dict(report.stats),
    }


def render_json(report: Report) -> str:
    return json.dumps(report_to_json(report), indent=2, sort_keys=False) + "\n"


def render(report: Report, options: RenderOptions) -> str:
    return render_json(report)
