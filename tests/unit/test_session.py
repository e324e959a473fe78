"""The Collector: what it keeps, what it forgets."""

from __future__ import annotations

import os

from igdeadlock.analysis.collector import Collector
from igdeadlock.host.procfs import process_alive
from igdeadlock.records import FetchTick, LockEdge, ProcessExit


def edge(pid: int, start: int, a: int, b: int, tid: int) -> LockEdge:
    return LockEdge(pid, tid, "t", 1, start, pid, a, 0, 0, 0, 0, b, 0, 0, 0, 0, 0, ((a, 0, 0),))


def test_graphs_of_vanished_processes_are_dropped_even_without_an_exit_event():
    running = {(1, 10)}
    collector = Collector(alive=lambda pid, start: (pid, start) in running)
    for record in (edge(1, 10, 0xA, 0xB, 11), edge(2, 20, 0xA, 0xB, 21), edge(2, 20, 0xB, 0xA, 22)):
        collector.consume(record)
    assert collector.reap() == 1  # pid 2's exit event was lost; it is gone from /proc
    found = collector.consume(FetchTick("edges", 0))
    assert [f.process.pid for f in found] == [2]  # analysed once more, then dropped
    collector.consume(FetchTick("edges", 0))
    assert set(collector.store.graphs) == {(1, 10)}


def test_exit_event_drops_the_graph_and_blocked_threads():
    collector = Collector()
    collector.consume(edge(3, 30, 0xA, 0xB, 31))
    collector.consume(ProcessExit(3, 30, 1, "t"))
    collector.consume(FetchTick("edges", 0))
    collector.consume(FetchTick("edges", 0))
    assert collector.store.graphs == {}


def test_process_alive_checks_pid_and_start_time():
    with open("/proc/self/stat") as handle:
        ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    start_ns = ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert process_alive(os.getpid(), start_ns) is True
    assert process_alive(os.getpid(), start_ns + 10**9) is False  # same pid, another process
    assert process_alive(2**22 + 12345, 0) is False


def test_a_code_address_is_named_the_same_in_every_stack_of_a_process():
    from igdeadlock.records import StackTrace

    collector = Collector()
    collector.consume(StackTrace(1, 5, ((7, 0x1100), (8, 0x2200)), (0x55000100, 0x7F000200)))
    # the gadget's VMA lookup gave up on the first frame of this one (mmap_lock contention)
    collector.consume(StackTrace(2, 5, ((0, 0x55000100), (0, 0x9999)), (0x55000100, 0x9999)))
    collector.consume(StackTrace(3, 6, ((0, 0x55000100),), (0x55000100,)))  # another process: its own map
    assert collector.stack(2).frames == ((7, 0x1100), (0, 0x9999))
    assert collector.stack(3).frames == ((0, 0x55000100),)
    assert collector.stack(1).frames == ((7, 0x1100), (8, 0x2200))


def test_frames_after_unwinding_junk_are_dropped():
    from igdeadlock.ig.decoder import _stack

    stack = _stack(9, 5, 4, (7, 0, 0, 8), (0x1100, 0, 0x12, 0x2200), (0x55000100, 0, 0x12, 0x7F000200))
    assert stack.frames == ((7, 0x1100),) and stack.addresses == (0x55000100,)


def test_a_reconnected_run_s_misuse_finds_its_stacks():
    """After a reconnection the gadget numbers sites from 1 again: a misuse's
    sites are kept apart from the earlier run's like every other record's."""
    from igdeadlock.gadget import Misuse
    from igdeadlock.records import MisuseEvent, StackTrace

    collector = Collector()
    collector.consume(StackTrace(site=7, pid=1, frames=((0, 0x10),)))  # the first run's site 7
    collector.begin_run()
    collector.consume(StackTrace(site=7, pid=2, frames=((0, 0x20),)))  # the second run's
    collector.consume(MisuseEvent(pid=2, tid=2, comm="p", mntns_id=1, process_start=5,
                                  misuse=int(Misuse.UNLOCK_NOT_OWNER), lock=0x1000, gen=0, kind=0, mode=0,
                                  held_mode=0, site=7, held_site=7, owner_tid=3))
    (misuse,) = collector.misuses.all_findings()
    for site in (misuse.site, misuse.held_site):
        stack = collector.stack(site)
        assert stack is not None and stack.pid == 2 and stack.frames == ((0, 0x20),)
