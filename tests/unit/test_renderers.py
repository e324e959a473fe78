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


def hang_finding():
    from igdeadlock.report.model import WaitView

    libc = Frame(0x91166, "/lib/libc.so.6", "__futex_abstimed_wait_common", 0xc6, None, None)
    waits = (
        WaitView(21, "app", (0, 0), (0xC008, 0), 0, 0, 12.5, 0,
                 [libc, Frame(0x1200, "/bin/app", "consumer", 0x30, "/src/app.c", 40)], kind=3, held=(A,)),
        WaitView(22, "app", (0, 0), A, 21, 0, 12.0, 21,
                 [Frame(0x1300, "/bin/app", "producer", 0x10, "/src/app.c", 50)], kind=0),
    )
    return FindingView("all-threads-blocked", None, 7, 5, "app", 1, ((0xC008, 0), A), (3, 0), (21, 22), (),
                       waits=waits, id="ab-7")


def test_a_hang_in_every_format():
    from igdeadlock.report.json import finding_to_json
    from igdeadlock.report.text import render_finding

    f = hang_finding()
    text = render_finding(f)
    assert "every thread of the process waits" in text
    assert "Thread 21 (app) waits for 12.5s on a futex at 0xc008" in text and "It holds: M0 (0xa000)" in text
    assert "Thread 22 (app) waits for 12.0s on mutex M0 (0xa000), held by thread 21" in text
    assert "SUMMARY: igdeadlock: all-threads-blocked app.c:40 in consumer" in text  # not the C library
    out = finding_to_json(f)
    assert [(b["tid"], b["wait_kind"], b["held"], b["held_by"]) for b in out["blocked"]] == [
        (21, "futex", ["0xa000"], 0), (22, "mutex", [], 21)]
    (result,) = sarif_document(Report([f], {}))["runs"][0]["results"]
    assert result["ruleId"] == "all-threads-blocked" and result["level"] == "error"
    assert result["locations"][0]["physicalLocation"]["region"] == {"startLine": 40}
    assert "thread 21 on futex (0xc008)" in result["message"]["text"]
    dot = render_dot(Report([f], {}))
    assert "waits for" in dot and "held by" in dot and "thread 22" in dot
    assert "held by" in render_mermaid(Report([f], {}))
    assert "<svg" in render_html(Report([f], {}))


def test_hangs_are_told_apart_by_where_their_threads_wait():
    from dataclasses import replace

    f = hang_finding()
    moved = replace(f, waits=(replace(f.waits[0], stack=[Frame(0x1400, "/bin/app", "elsewhere", 0x8, None, None)]),
                              f.waits[1]))
    assert signature(f) != signature(moved)
    assert signature(f) == signature(replace(f, pid=99, waits=tuple(replace(w, tid=w.tid + 100) for w in f.waits)))
