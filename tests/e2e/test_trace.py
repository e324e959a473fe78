"""End to end: the real gadget image in a real `ig daemon`, tracing real C programs."""

from __future__ import annotations

from helpers import IMAGE, program_facts, run_cli, trace_json, unsuppressed


def test_abba_inversion_is_reported_with_both_mutexes_and_threads(ig_daemon, program):
    report, stderr = trace_json(ig_daemon, [program("abba")])
    facts = program_facts(stderr)
    findings = unsuppressed(report)
    assert len(findings) == 1, report
    finding = findings[0]
    assert finding["kind"] == "potential-deadlock"
    assert sorted(int(m, 16) for m in finding["mutexes"]) == sorted(facts["A"] + facts["B"])
    assert sorted(finding["threads"]) == sorted(facts["ab"] + facts["ba"])
    by_thread = {edge["tid"]: edge for edge in finding["edges"]}
    ab, ba = by_thread[facts["ab"][0]], by_thread[facts["ba"][0]]
    assert (int(ab["from"], 16), int(ab["to"], 16)) == (facts["A"][0], facts["B"][0])
    assert (int(ba["from"], 16), int(ba["to"], 16)) == (facts["B"][0], facts["A"][0])
    # the calling site of each lock is symbolized, down to the source line
    assert ab["to_stack"][0]["function"] == "lock_a_then_b"
    assert ab["to_stack"][0]["source"].startswith("abba.c:")
    assert ba["from_stack"][0]["function"] == "lock_b_then_a"
    assert report["stats"]["edges_seen"] == 2
    # the daemon's batches were decoded whole (the fast path), not element by element
    assert report["stats"]["edge_records_batched"] >= 2


def test_consistent_lock_order_reports_nothing(ig_daemon, program):
    report, _ = trace_json(ig_daemon, [program("ordered")])
    assert report["findings"] == []
    # edges were seen (so tracing worked): A->B, A->C, B->C per thread
    assert report["stats"]["edges_seen"] >= 3


def test_graph_of_exited_process_is_dropped(ig_daemon, program):
    report, _ = trace_json(ig_daemon, [program("abba")])
    stats = report["stats"]
    assert stats["processes_seen"] == 1
    assert stats["processes_exited"] == 1
    assert stats["processes_tracked"] == 0
    assert len(report["findings"]) == 1  # the finding outlives the process


def test_private_daemon_when_none_is_given(program):
    # no --remote and no daemon on the default socket: igdeadlock starts its own
    report, stderr = trace_json(None, [program("abba")])
    assert len(unsuppressed(report)) == 1
    assert "attaches them itself" in stderr or "uprobes" not in stderr


def test_text_report_explains_the_cycle(ig_daemon, program):
    binary = program("abba")
    result = run_cli(["trace", "--remote", ig_daemon, "--image", IMAGE, "--", str(binary)])
    assert result.returncode == 0, result.stderr
    facts = program_facts(result.stdout)
    text = result.stdout
    assert "lock-order inversion (potential deadlock)" in text
    assert f"0x{facts['A'][0]:x}" in text and f"0x{facts['B'][0]:x}" in text
    assert f"in thread {facts['ab'][0]}" in text and f"in thread {facts['ba'][0]}" in text


def test_missing_image_says_how_to_build_it(ig_daemon, program):
    result = run_cli(["trace", "--remote", ig_daemon, "--image", "localhost/igdeadlock:no-such-tag",
                      "--", str(program("abba"))])
    assert result.returncode == 2
    assert "make gadget" in result.stderr


def test_timeout_terminates_the_command(ig_daemon):
    report, stderr = trace_json(ig_daemon, ["sleep", "600"], "--timeout", "1")
    assert "--timeout reached" in stderr
    assert report["stats"]["command_exit_status"] != 0
