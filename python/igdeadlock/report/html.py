"""One self-contained HTML page (no script, no network): summary table, one
picture per cycle, the text report."""

from __future__ import annotations

import html
import json
import math

from igdeadlock.analysis.waitfor import ACTUAL_DEADLOCK
from igdeadlock.report.graphs import _interesting
from igdeadlock.report.model import FindingView, RenderOptions, Report, hex_address, lock_names, where
from igdeadlock.report.text import render_finding


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
    for e in f.edges:
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
                   f'font-family="sans-serif">{lock_names(f)[lock]}</text>')
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


def render(report: Report, options: RenderOptions) -> str:
    return render_html(report, show_suppressed=options.show_suppressed)
