"""The cycles as graphs: Graphviz DOT and Mermaid."""

from __future__ import annotations

import json
from typing import List, Tuple

from igdeadlock.analysis.waitfor import ACTUAL_DEADLOCK, ALL_THREADS_BLOCKED
from igdeadlock.gadget import LOCK_MODE_NAMES
from igdeadlock.report.model import FindingView, RenderOptions, Report, hex_address, lock_label, where

# one graph edge: (from node, to node, label); nodes are locks (lock, gen) or thread ids
Arrow = Tuple[object, object, str]


def _edge_label(f: FindingView, index: int) -> str:
    e = f.edges[index]
    site = next((fr for fr in e.to_stack or [] if fr.function), None)
    where_from = f" at {site.function}" + (f" ({site.source})" if site.source else "") if site else ""
    mode = f" {LOCK_MODE_NAMES.get(e.to_mode)}" if f.lock_kinds and f.lock_kinds[0] == 1 else ""
    verb = "waits" if f.kind == ACTUAL_DEADLOCK else "takes"
    return f"thread {e.tid} {verb}{mode}{where_from}"


def _hang_arrows(f: FindingView) -> List[Arrow]:
    """A hang as a graph: each thread waits for an object; each lock it holds is held by it."""
    arrows: List[Arrow] = []
    for w in f.waits:
        arrows.append((w.tid, w.waits_for, "waits for"))
        arrows.extend((lock, w.tid, "held by") for lock in w.held)
    return arrows


def _node_label(f: FindingView, node: object) -> str:
    if isinstance(node, int):
        return f"thread {node}"
    lock = node if isinstance(node, tuple) else (0, 0)
    return lock_label(f, lock) if lock in f.locks else hex_address(lock[0])


def _node_id(prefix: str, node: object) -> str:
    if isinstance(node, int):
        return f"{prefix}_t{node}"
    lock = node if isinstance(node, tuple) else (0, 0)
    return f"{prefix}_{lock[0]:x}_{lock[1]}"


def _arrows(f: FindingView) -> Tuple[List[object], List[Arrow]]:
    """Nodes and arrows of a finding's graph."""
    if f.kind == ALL_THREADS_BLOCKED:
        arrows = _hang_arrows(f)
    else:
        arrows = [(e.from_lock, e.to_lock, _edge_label(f, i)) for i, e in enumerate(f.edges)]
    nodes: List[object] = list(f.locks)
    for a, b, _ in arrows:
        nodes += [n for n in (a, b) if n not in nodes]
    return nodes, arrows


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
        actual = f.kind in (ACTUAL_DEADLOCK, ALL_THREADS_BLOCKED)
        lines.append(f"    color={'red' if actual else 'orange' if not f.suppressed else 'gray'};")
        nodes, arrows = _arrows(f)
        for node in nodes:
            shape = ", shape=ellipse" if isinstance(node, int) else ""
            lines.append(f"    {_node_id(f'f{n}', node)} [label={json.dumps(_node_label(f, node))}{shape}];")
        for a, b, label in arrows:
            lines.append(f"    {_node_id(f'f{n}', a)} -> {_node_id(f'f{n}', b)} [label={json.dumps(label)}];")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace('"', "'")


def mermaid_graph(f: FindingView, prefix: str = "m") -> List[str]:
    lines = ["flowchart LR"]
    nodes, arrows = _arrows(f)
    for node in nodes:
        open_, close = ("((", "))") if isinstance(node, int) else ("[", "]")
        lines.append(f'  {_node_id(prefix, node)}{open_}"{_mermaid_text(_node_label(f, node))}"{close}')
    for a, b, label in arrows:
        lines.append(f'  {_node_id(prefix, a)} -->|"{_mermaid_text(label)}"| {_node_id(prefix, b)}')
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
