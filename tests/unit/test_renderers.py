"""DOT, Mermaid and HTML renderings of a hand-made finding."""

from __future__ import annotations

from igdeadlock.records import Frame
from igdeadlock.report.graphs import render_dot, render_mermaid
from igdeadlock.report.html import cycle_svg, render_html
from igdeadlock.report.model import EdgeView, FindingView, Report, signature
from igdeadlock.report.sarif import sarif_document

A, B = (0xA000, 0), (0xB000, 0)


def finding(pid=1, a=A, b=B, target="t1"):
    def frames(fn, line):
        return [Frame(0x1130, "/bin/app", fn, 0x20, "/src/app.c", line)]
    edges = (EdgeView(a, b, 11, "app", 0, 0, 0, (), frames("first", 10), frames("first", 11)),
             EdgeView(b, a, 12, "app", 0, 0, 0, (), frames("second", 20), frames("second", 21)))
    return FindingView("potential-deadlock", None, pid, 5, "app", 1, (a, b), (0, 0), (11, 12), edges, id=f"pd-{pid}",
                       target=target)


def test_dot_and_mermaid_draw_each_edge_with_its_thread():
    report = Report([finding()], {})
    dot = render_dot(report)
    assert dot.startswith("digraph") and dot.count("->") == 2 and "thread 11 takes at first" in dot
    mermaid = render_mermaid(report)
    assert "flowchart LR" in mermaid and mermaid.count("-->") == 2 and "thread 12 takes at second" in mermaid


def test_same_code_in_two_processes_has_one_signature_whatever_the_addresses():
    other = finding(pid=2, a=(0xC000, 0), b=(0xD000, 0), target="t2")
    assert signature(finding()) == signature(other)
    (cluster,) = Report([finding(), other], {}).clusters
    assert [o.target for o in cluster.occurrences] == ["t1", "t2"]


def test_html_is_self_contained_with_one_picture_per_finding():
    page = render_html(Report([finding(), finding(pid=2)], {}, [{"address": "t1", "state": "connected"}]))
    assert page.count('<svg class="cycle"') == 2 and "<script" not in page
    assert cycle_svg(finding()).count("<circle") == 2


def test_sarif_points_at_source_lines_as_file_uris():
    (result,) = sarif_document(Report([finding()], {}))["runs"][0]["results"]
    location = result["locations"][0]["physicalLocation"]
    assert location == {"artifactLocation": {"uri": "file:///src/app.c"}, "region": {"startLine": 11}}
