"""Companion-side benchmarks: decoding + ingest throughput, witness search on an
adversarial graph, and one million edges. Prints one JSON object.

usage: python bench/analysis.py GADGETINFO.pb [--records N] [--million N]
GADGETINFO.pb is the serialized GadgetInfo of the real gadget (bench.py saves it).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Dict, Iterable, List

import synthetic

from igdeadlock.analysis.lockorder import LockGraphStore, ProcessGraph, ProcessKey
from igdeadlock.cli import tune_garbage_collector
from igdeadlock.ig.decoder import StreamDecoder
from igdeadlock.ig.proto import api_pb2
from igdeadlock.records import LockEdge, LockEdgeBatch


def ingest(decoder: StreamDecoder, store: LockGraphStore, events: Iterable[api_pb2.GadgetEvent]) -> None:
    """Events through the decoder into the graphs, as the igdeadlock command does."""
    for event in events:
        for output in decoder.feed(event):
            if type(output) is LockEdgeBatch:
                store.add_edge_batch(output)
            elif type(output) is LockEdge:
                store.add_edge(output)


def ingest_rate(info: api_pb2.GadgetInfo, records: int, pods: int = 0) -> Dict[str, float]:
    """Edge records per second through the decoder and into the lock-order graphs
    (``pods``: of that many processes in Kubernetes pods, IG's enrichment filled in)."""
    edges_ds = next(ds for ds in info.dataSources if ds.name == "edges")
    events = synthetic.batches(edges_ds, synthetic.random_edges(records, locks=records // 5, threads=64, pods=pods))
    decoder = StreamDecoder(lazy_edges=True)  # as the igdeadlock command decodes
    decoder.set_info(info)
    store = LockGraphStore()
    started = time.perf_counter()
    ingest(decoder, store, events)
    elapsed = time.perf_counter() - started
    assert decoder.stats.records == records == store.stats.edges_seen, (decoder.stats, store.stats)
    return {"records": records, "seconds": elapsed, "records_per_second": records / elapsed}


def memory_per_edge(info: api_pb2.GadgetInfo, records: int) -> Dict[str, float]:
    """Bytes the companion keeps per distinct edge, through the decoder into the
    graphs as the igdeadlock command ingests them (Python's allocations, tracemalloc),
    and after an analysis has decoded every edge's evidence."""
    import tracemalloc

    edges_ds = next(ds for ds in info.dataSources if ds.name == "edges")
    events = list(synthetic.batches(edges_ds, synthetic.random_edges(records, locks=records // 2, threads=64)))
    decoder = StreamDecoder(lazy_edges=True)
    decoder.set_info(info)
    tracemalloc.start()
    store = LockGraphStore()
    base = tracemalloc.get_traced_memory()[0]
    ingest(decoder, store, events)
    del events
    kept = sum(graph.edge_count for graph in store.graphs.values())
    ingested = tracemalloc.get_traced_memory()[0] - base
    for graph in store.graphs.values():
        for source, target in list(graph.edges):
            graph.evidence(source, target)
    decoded = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"edges": kept, "bytes_per_edge": ingested / kept, "bytes_per_edge_decoded": decoded / kept}


def _edge(pid: int, tid: int, a: int, b: int) -> LockEdge:
    return LockEdge(pid, tid, "bench", 1, 1, pid, a, 0, 0, 0, 0, b, 0, 0, 0, 0, 0, ((a, 0, 0),))


def adversarial(locks: int = 16) -> Dict[str, float]:
    """A complete lock-order graph: every ordered pair of locks, each from its own thread.

    It has sum over k of locks!/(locks-k)!/k simple cycles (about 3.5e12 for 16
    locks): enumerating them never ends, one witness per pair of locks does.
    """
    graph = ProcessGraph(ProcessKey(1, 1))
    tid = 100
    for a in range(locks):
        for b in range(locks):
            if a != b:
                graph.add(_edge(1, tid, a, b))
                tid += 1
    started = time.perf_counter()
    cycles = graph.find_cycles()
    elapsed = time.perf_counter() - started
    return {"locks": locks, "edges": graph.edge_count, "witness_cycles": len(cycles), "seconds": elapsed}


def million(edges: int, locks: int, threads: int) -> Dict[str, float]:
    """Ingest and analyse a million-edge graph of one process; time and peak memory."""
    import random

    rng = random.Random(7)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    records: List[LockEdge] = []
    for _ in range(edges):
        a, b = rng.randrange(locks), rng.randrange(locks)
        if a != b:
            records.append(_edge(1, 100 + rng.randrange(threads), a, b))
    graph = ProcessGraph(ProcessKey(1, 1))
    started = time.perf_counter()
    for record in records:
        graph.add(record)
    ingested = time.perf_counter()
    cycles = graph.find_cycles()
    finished = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "edges": graph.edge_count,
        "ingest_seconds": ingested - started,
        "analysis_seconds": finished - ingested,
        "total_seconds": finished - started,
        "witness_cycles": len(cycles),
        "edges_left_for_next_analysis": len(graph.dirty),
        "peak_rss_mib": peak / 1024,
        "rss_growth_mib": (peak - before) / 1024,
    }


def many_processes(processes: int, edges_each: int, locks_each: int) -> Dict[str, float]:
    """A million edges spread like real programs: many processes, each with a mostly
    ordered lock graph and a few inversions. Analysed to the end (until nothing is left)."""
    import random

    rng = random.Random(11)
    records: List[LockEdge] = []
    for pid in range(1, processes + 1):
        for _ in range(edges_each):
            a, b = sorted(rng.sample(range(locks_each), 2))
            if rng.random() < 0.005:
                a, b = b, a  # an inversion: a cycle with some consistent edge
            records.append(_edge(pid, pid * 1000 + rng.randrange(16), a, b))
    store = LockGraphStore()
    started = time.perf_counter()
    for record in records:
        store.add_edge(record)
    ingested = time.perf_counter()
    rounds, findings = 0, 0
    while True:
        rounds += 1
        findings += len(store.analyse())
        if not any(graph.dirty for graph in store.graphs.values()):
            break
    finished = time.perf_counter()
    return {
        "edges": store.stats.edges_seen,
        "processes": processes,
        "ingest_seconds": ingested - started,
        "analysis_seconds": finished - ingested,
        "total_seconds": finished - started,
        "analysis_rounds": rounds,
        "findings": findings,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gadget_info")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--million", type=int, default=1_000_000)
    args = parser.parse_args()
    tune_garbage_collector()  # as the igdeadlock command does
    info = api_pb2.GadgetInfo()
    with open(args.gadget_info, "rb") as handle:
        info.ParseFromString(handle.read())
    info = synthetic.numbered(info)
    result = {
        "ingest": ingest_rate(info, args.records),
        "ingest_kubernetes": ingest_rate(info, args.records, pods=20),
        "memory": memory_per_edge(info, args.records),
        "adversarial": adversarial(),
        "many_processes": many_processes(1000, args.million // 1000, locks_each=300),
        "million": million(args.million, locks=args.million // 5, threads=256),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
