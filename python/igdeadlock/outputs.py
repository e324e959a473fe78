"""More report formats: SARIF 2.1.0, Graphviz DOT, Mermaid and a self-contained HTML page."""

from __future__ import annotations

import html
import json
import math
import pathlib
from typing import Callable, Dict, List, Optional

from igdeadlock import __version__
from igdeadlock.decode import LOCK_MODE_NAMES
from igdeadlock.graph import ACTUAL_DEADLOCK, POTENTIAL_DEADLOCK, SINGLE_THREAD_INVERSION, LockId
from igdeadlock.report import FindingView, Report, hex_address, render_finding, signature, where
from igdeadlock.symbolize import Frame

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://inspektor-gadget.io/"

_RULES = {
    ACTUAL_DEADLOCK: ("Threads are deadlocked: each waits for a lock the next one holds.", "error"),
    POTENTIAL_DEADLOCK: ("Lock-order inversion: distinct threads take locks in an order that can deadlock.",
                         "error"),
    SINGLE_THREAD_INVERSION: ("Lock-order inversion within one thread: it deadlocks once two threads run it.",
                              "warning"),
}


def _lock_names(f: FindingView) -> Dict[LockId, str]:
    return {lock: f"M{i}" for i, lock in enumerate(f.locks)}


def _label(f: FindingView, lock: LockId) -> str:
    return f"{_lock_names(f)[lock]} {hex_address(lock[0])}"


def _message(f: FindingView) -> str:
    names = _lock_names(f)
    ring = " => ".join(f"{names[lock]} ({hex_address(lock[0])})" for lock in f.locks) + f" => {names[f.locks[0]]}"
    place = f" in {where(f)}" if where(f) else ""
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
        locations, related = [], []
        for i, e in enumerate(f.edges):
            acquired = _first_located(e.to_stack)
            held = _first_located(e.from_stack)
            what = (f"thread {e.tid} waits for {_label(f, e.to_lock)} holding {_label(f, e.from_lock)}"
                    if f.kind == ACTUAL_DEADLOCK else
                    f"thread {e.tid} acquires {_label(f, e.to_lock)} while holding {_label(f, e.from_lock)}")
            if acquired is not None:
                location = _sarif_location(acquired, what)
                (locations if not locations else related).append(location)
            if held is not None:
                related.append(_sarif_location(held, f"thread {e.tid} acquired {_label(f, e.from_lock)} here"))
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


# --- graphs ------------------------------------------------------------------------

def _edge_label(f: FindingView, index: int) -> str:
    e = f.edges[index]
    site = next((fr for fr in e.to_stack or [] if fr.function), None)
    where_from = f" at {site.function}" + (f" ({site.source})" if site.source else "") if site else ""
    mode = f" {LOCK_MODE_NAMES.get(e.to_mode)}" if f.lock_kinds and f.lock_kinds[0] == 1 else ""
    verb = "waits" if f.kind == ACTUAL_DEADLOCK else "takes"
    return f"thread {e.tid} {verb}{mode}{where_from}"


def _interesting(report: Report, show_suppressed: bool) -> List[FindingView]:
    return [f for f in report.findings if show_suppressed or not f.suppressed]


def render_dot(report: Report, show_suppressed: bool = True) -> str:
    lines = ["digraph igdeadlock {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    for n, f in enumerate(_interesting(report, show_suppressed)):
        title = f"{f.kind}{' (' + f.suppressed + ')' if f.suppressed else ''}: pid {f.pid} ({f.comm})"
        if where(f):
            title += f" {where(f)}"
        lines.append(f"  subgraph cluster_{n} {{")
        lines.append(f"    label={json.dumps(title)};")
        lines.append(f"    color={'red' if f.kind == ACTUAL_DEADLOCK else 'orange' if not f.suppressed else 'gray'};")
        for lock in f.locks:
            lines.append(f"    f{n}_{lock[0]:x}_{lock[1]} [label={json.dumps(_label(f, lock))}];")
        for i, e in enumerate(f.edges):
            lines.append(f"    f{n}_{e.from_lock[0]:x}_{e.from_lock[1]} -> f{n}_{e.to_lock[0]:x}_{e.to_lock[1]} "
                         f"[label={json.dumps(_edge_label(f, i))}];")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace('"', "'")


def mermaid_graph(f: FindingView, prefix: str = "m") -> List[str]:
    lines = ["flowchart LR"]
    for lock in f.locks:
        lines.append(f'  {prefix}_{lock[0]:x}_{lock[1]}["{_mermaid_text(_label(f, lock))}"]')
    for i, e in enumerate(f.edges):
        lines.append(f'  {prefix}_{e.from_lock[0]:x}_{e.from_lock[1]} -->|"{_mermaid_text(_edge_label(f, i))}"| '
                     f'{prefix}_{e.to_lock[0]:x}_{e.to_lock[1]}')
    return lines


def render_mermaid(report: Report, show_suppressed: bool = True) -> str:
    parts = []
    for f in _interesting(report, show_suppressed):
        title = f"{f.kind}{' (' + f.suppressed + ')' if f.suppressed else ''}: pid {f.pid} ({f.comm}) {where(f)}"
        parts.append(f"%% {title.strip()} [{f.id}]\n" + "\n".join(mermaid_graph(f)))
    return "\n\n".join(parts) + "\n"


# --- HTML ---------------------------------------------------------------------------

def cycle_svg(f: FindingView, size: int = 360) -> str:
    """The cycle as a picture: locks on a circle, one arrow per edge, labelled."""
    count = len(f.locks)
    radius = size * 0.32
    centre = size / 2
    position = {}
    for i, lock in enumerate(f.locks):
        angle = -math.pi / 2 + 2 * math.pi * i / count
        position[lock] = (centre + radius * math.cos(angle), centre + radius * math.sin(angle))
    colour = "#c62828" if f.kind == ACTUAL_DEADLOCK else "#ef6c00" if not f.suppressed else "#757575"
    out = [f'<svg class="cycle" id="cycle-{f.id}" xmlns="http://www.w3.org/2000/svg" width="{size}" '
           f'height="{size}" viewBox="0 0 {size} {size}" role="img" aria-label="lock cycle of {f.id}">',
           f'<defs><marker id="arrow-{f.id}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
           f'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/>'
           f'</marker></defs>']
    for i, e in enumerate(f.edges):
        (x1, y1), (x2, y2) = position[e.from_lock], position[e.to_lock]
        dx, dy = x2 - x1, y2 - y1
        length = math.hypot(dx, dy) or 1.0
        shrink = 34 / length
        bend = 18 if count == 2 else 0  # two arrows between the same pair: bend them apart
        nx, ny = -dy / length * bend, dx / length * bend
        sx, sy, ex, ey = x1 + dx * shrink, y1 + dy * shrink, x2 - dx * shrink, y2 - dy * shrink
        mx, my = (sx + ex) / 2 + nx, (sy + ey) / 2 + ny
        out.append(f'<path d="M{sx:.1f},{sy:.1f} Q{mx:.1f},{my:.1f} {ex:.1f},{ey:.1f}" fill="none" '
                   f'stroke="{colour}" stroke-width="2" marker-end="url(#arrow-{f.id})"/>')
        out.append(f'<text x="{mx + nx:.1f}" y="{my + ny:.1f}" font-size="11" text-anchor="middle" '
                   f'font-family="sans-serif">{html.escape(f"T{e.tid}")}</text>')
    for lock, (x, y) in position.items():
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="30" fill="#fff" stroke="#333" stroke-width="1.5"/>')
        out.append(f'<text x="{x:.1f}" y="{y - 2:.1f}" font-size="13" text-anchor="middle" font-weight="bold" '
                   f'font-family="sans-serif">{_lock_names(f)[lock]}</text>')
        out.append(f'<text x="{x:.1f}" y="{y + 12:.1f}" font-size="8" text-anchor="middle" '
                   f'font-family="monospace">{html.escape(hex_address(lock[0])[-8:])}</text>')
    out.append("</svg>")
    return "".join(out)


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.finding { border: 1px solid #ddd; border-radius: 6px; padding: 1em; margin-bottom: 2em; }
.finding.actual-deadlock { border-color: #c62828; }
.finding pre { background: #fafafa; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.kind-actual-deadlock { color: #c62828; font-weight: bold; }
.kind-potential-deadlock { color: #ef6c00; font-weight: bold; }
.suppressed { color: #757575; }
"""


def render_html(report: Report, show_suppressed: bool = True) -> str:
    """One self-contained page: no script, no external resource."""
    findings = _interesting(report, show_suppressed)
    rows = []
    for c in report.clusters:
        f = c.representative
        if f.suppressed and not show_suppressed:
            continue
        places = "<br>".join(html.escape(f"{o.node or o.target} {o.namespace + '/' + o.pod if o.pod else ''} "
                                         f"pid {o.pid} ({o.comm})".strip()) for o in c.occurrences)
        rows.append(
            f'<tr><td class="kind-{f.kind}">{html.escape(f.kind)}</td>'
            f'<td class="suppressed">{html.escape(f.suppressed or "")}</td>'
            f'<td>{len(f.locks)}</td><td>{html.escape(", ".join(map(str, f.threads)))}</td>'
            f'<td>{places}</td><td><a href="#{f.id}">{html.escape(f.id)}</a></td></tr>')
    sections = []
    for f in findings:
        title = f"{f.kind}" + (f" (suppressed: {f.suppressed})" if f.suppressed else "")
        sections.append(
            f'<section class="finding {html.escape(f.kind)}" id="{html.escape(f.id)}">'
            f'<h2>{html.escape(title)} &mdash; pid {f.pid} ({html.escape(f.comm)}) {html.escape(where(f))}</h2>'
            f'{cycle_svg(f)}<pre>{html.escape(render_finding(f))}</pre></section>')
    stats = html.escape(json.dumps(report.stats, indent=2))
    targets = "".join(f"<li>{html.escape(str(t.get('address')))}: {html.escape(str(t.get('state')))}"
                      f"{html.escape(' (' + str(t['error']) + ')') if t.get('error') else ''}</li>"
                      for t in report.targets)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>igdeadlock report</title><style>{_STYLE}</style></head><body>"
        f"<h1>igdeadlock report</h1><p>{len(findings)} finding(s) in {len(report.clusters)} group(s) of the same "
        "code.</p>"
        "<table><thead><tr><th>kind</th><th>suppressed</th><th>locks</th><th>threads</th><th>where</th>"
        f"<th>finding</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{''.join(sections)}"
        f"<h2>Targets</h2><ul>{targets}</ul><h2>Statistics</h2><pre>{stats}</pre>"
        "</body></html>\n"
    )


RENDERERS: Dict[str, Callable[..., str]] = {
    "sarif": render_sarif,
    "dot": render_dot,
    "mermaid": render_mermaid,
    "html": render_html,
}
