"""The cycles as graphs: Graphviz DOT and Mermaid."""

from __future__ import annotations

import json
from typing import List

from igdeadlock.analysis.waitfor import ACTUAL_DEADLOCK
from igdeadlock.gadget import LOCK_MODE_NAMES
from igdeadlock.report.model import FindingView, RenderOptions, Report, lock_label, where


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
            lines.append(f"    f{n}_{lock[0]:x}_{lock[1]} [label={json.dumps(lock_label(f, lock))}];")
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
        lines.append(f'  {prefix}_{lock[0]:x}_{lock[1]}["{_mermaid_text(lock_label(f, lock))}"]')
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


def render_dot_report(report: Report, options: RenderOptions) -> str:
    return render_dot(report, show_suppressed=options.show_suppressed)


def render_mermaid_report(report: Report, options: RenderOptions) -> str:
    return render_mermaid(report, show_suppressed=options.show_suppressed)
