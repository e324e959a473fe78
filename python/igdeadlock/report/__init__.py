"""Reports: the model (model.py) and one renderer per format, all with the
signature ``render(report, options) -> str``."""

from __future__ import annotations

from typing import Callable, Dict, Optional

from igdeadlock.report import graphs, html, json, sarif, text
from igdeadlock.report.model import RenderOptions, Report

Renderer = Callable[[Report, RenderOptions], str]

RENDERERS: Dict[str, Renderer] = {
    "text": text.render,
    "json": json.render,
    "sarif": sarif.render,
    "dot": graphs.render_dot_report,
    "mermaid": graphs.render_mermaid_report,
    "html": html.render,
}
FORMATS = tuple(RENDERERS)


def render(report: Report, fmt: str, options: Optional[RenderOptions] = None) -> str:
    """The report in ``fmt``, one of FORMATS."""
    return RENDERERS[fmt](report, options or RenderOptions())
