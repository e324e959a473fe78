"""Synthetic gadget events in IG's wire format, for the analysis benchmarks."""

from __future__ import annotations

import random
import struct
from typing import Dict, Iterator, List, Mapping

from igdeadlock.ig.datasource import _SCALARS, FIELD_FLAG_EMPTY, KIND_ARRAY_FLAG, KIND_CSTRING
from igdeadlock.ig.proto import api_pb2


def numbered(info: api_pb2.GadgetInfo) -> api_pb2.GadgetInfo:
    """The info as RunGadget sends it: datasources sorted by name, ids = positions."""
    out = api_pb2.GadgetInfo()
    out.CopyFrom(info)
    del out.dataSources[:]
    for index, ds in enumerate(sorted(info.dataSources, key=lambda d: d.name)):
        copy = out.dataSources.add()
        copy.CopyFrom(ds)
        copy.id = index
    return out


def pack_element(ds: api_pb2.DataSource, values: Mapping[str, object]) -> api_pb2.DataElement:
    """One element of a datasource, every field taken from ``values`` (0 when absent)."""
    order = ">" if ds.flags & 1 else "<"
    sizes: Dict[int, int] = {}
    for f in ds.fields:
        if f.size and not f.flags & FIELD_FLAG_EMPTY:
            sizes[f.payloadIndex] = max(sizes.get(f.payloadIndex, 0), f.offs + f.size)
    # one payload per index, as IG sends them: enrichment payloads (size-0 fields) stay empty
    count = max(f.payloadIndex for f in ds.fields) + 1
    buffers = [bytearray(sizes.get(i, 0)) for i in range(count)]
    for f in ds.fields:
        if f.flags & FIELD_FLAG_EMPTY or f.fullName not in values:
            continue
        value, kind = values[f.fullName], int(f.kind)
        if not f.size:  # an operator-added string: the whole payload
            buffers[f.payloadIndex][:] = str(value).encode()
            continue
        if kind & KIND_ARRAY_FLAG:
            char, size = _SCALARS[kind & ~KIND_ARRAY_FLAG]
            items = list(value) + [0] * (f.size // size - len(value))
            struct.pack_into(f"{order}{f.size // size}{char}", buffers[f.payloadIndex], f.offs, *items)
        elif kind == KIND_CSTRING:
            buffers[f.payloadIndex][f.offs:f.offs + f.size] = str(value).encode()[:f.size - 1].ljust(f.size, b"\0")
        else:
            struct.pack_into(order + _SCALARS[kind][0], buffers[f.payloadIndex], f.offs, value)
    return api_pb2.DataElement(payload=[bytes(b) for b in buffers])


def random_edges(count: int, locks: int, threads: int, pid: int = 4242, seed: int = 1,
                 pods: int = 0) -> Iterator[Dict[str, object]]:
    """Edge records of one process: random lock pairs, one held lock each. With
    ``pods``, of that many processes, each in a Kubernetes pod and container of
    its own (names of different lengths, as IG's enrichment sends them)."""
    rng = random.Random(seed)
    base = 0x7f0000000000
    for _ in range(count):
        a, b = rng.sample(range(locks), 2)
        process = pid + 100_000 * rng.randrange(pods) if pods else pid
        record: Dict[str, object] = {
            "from_lock": base + 64 * a, "to_lock": base + 64 * b, "context": a, "pid": process,
            "tid": process + 1 + rng.randrange(threads), "mntns_id": 4026531840, "process_start": 1,
            "session_id": process, "from_site": 1, "to_site": 2, "held_count": 1, "comm": "synthetic",
            "held_locks": [base + 64 * a],
        }
        if pods:
            number = process // 100_000
            record.update({"k8s.node": "node-1", "k8s.namespace": "shop", "k8s.podName": f"api-{number}-{'x' * number}",
                           "k8s.containerName": f"app{number}", "runtime.containerName": f"k8s_app{number}"})
        yield record


def batches(ds: api_pb2.DataSource, records: Iterator[Mapping[str, object]], batch: int = 1000,
            first_seq: int = 1) -> List[api_pb2.GadgetEvent]:
    """GadgetEvents carrying the records as map-iterator batches."""
    events, elements, seq = [], [], first_seq
    for values in records:
        elements.append(pack_element(ds, values))
        if len(elements) == batch:
            events.append(api_pb2.GadgetEvent(type=0, seq=seq, dataSourceID=ds.id,
                                              payload=api_pb2.GadgetDataArray(dataArray=elements).SerializeToString()))
            elements, seq = [], seq + 1
    if elements:
        events.append(api_pb2.GadgetEvent(type=0, seq=seq, dataSourceID=ds.id,
                                          payload=api_pb2.GadgetDataArray(dataArray=elements).SerializeToString()))
    return events
