"""The coverage table: which processes were traced, and why the others were not."""

from __future__ import annotations

from igdeadlock.analysis.coverage import UNKNOWN_ON_REMOTE, CoverageTable

MS = 1_000_000


def test_a_library_found_marks_the_process_traced_and_a_later_miss_does_not_undo_it():
    table = CoverageTable()
    table.probed(10, 5_000 * MS, "sh", "/bin/sh", "/lib/libc.so.6", "glibc", False, "")
    table.probed(10, 5_000 * MS, "sh", "/bin/sh", None, None, False, "exited before its C library could be found")
    (entry,) = table.processes(probes_known=True)
    assert (entry.traced, entry.library, entry.flavor, entry.reason) == (True, "/lib/libc.so.6", "glibc", None)
    assert table.counts() == (1, 0)


def test_start_times_from_proc_match_the_gadgets_within_a_few_ticks():
    table = CoverageTable()
    table.probed(10, 5_000 * MS, "a", "/a", None, None, False, "no pthread lock functions (Go runtime)")
    table.seen(10, 5_000 * MS + 7 * MS, "a")  # the gadget's nanoseconds vs /proc's clock ticks
    table.seen(10, 9_000 * MS, "b")  # the same pid, a later process
    entries = table.processes(probes_known=True)
    assert [(e.comm, e.traced, e.reason) for e in entries] == [
        ("a", False, "no pthread lock functions (Go runtime)"), ("b", False, None)]
    assert table.counts() == (0, 2)


def test_lock_records_mark_a_process_traced_whatever_else_is_known():
    table = CoverageTable()
    table.seen(7, 1_000 * MS, "server", "/usr/sbin/server", 4026531832)
    table.lock_events_from(7, 1_000 * MS, "", 4026531832)
    (entry,) = table.processes(probes_known=False)
    assert entry.traced and entry.reason is None and entry.exe == "/usr/sbin/server"


def test_on_a_target_whose_probes_ig_placed_silence_is_not_coverage():
    table = CoverageTable()
    table.seen(8, 1_000 * MS, "idle", "/usr/bin/idle")
    (entry,) = table.processes(probes_known=False)
    assert entry.traced is False and entry.reason == UNKNOWN_ON_REMOTE
    assert entry.to_json()["reason"] == UNKNOWN_ON_REMOTE
