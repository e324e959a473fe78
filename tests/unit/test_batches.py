"""Whole-fetch decoding (LockEdgeBatch) gives exactly what element-by-element decoding gives."""

from __future__ import annotations

import random

import pytest
from test_decode import EDGE_VALUES, edges_datasource, field, info_event, info_with, pack

from igdeadlock.analysis.lockorder import LockGraphStore
from igdeadlock.ig.batch import ElementFraming, split_elements, uniform_framing
from igdeadlock.ig.decoder import StreamDecoder
from igdeadlock.ig.proto import api_pb2
from igdeadlock.records import FetchTick, LockEdge, LockEdgeBatch, ProcessMeta

POD = 2  # payload index of the enrichment field the tests add


def with_pod_field(ds):
    """The datasource as IG sends it in Kubernetes: an operator-added string, one payload of its own."""
    ds.fields.append(field("k8s.podName", 12, 0, 0, payload=POD))
    return ds


def element(layout, values, pod=""):
    packed = pack(layout, values, values.get("big_endian", False))
    return api_pb2.DataElement(payload=list(packed.payload) + [pod.encode()])


def random_values(rng, processes=3):
    pid = rng.randrange(1, processes + 1) * 100
    held = rng.randrange(1, 5)
    return dict(EDGE_VALUES, pid=pid, session_id=pid, process_start=pid * 7, tid=pid + rng.randrange(8),
                from_lock=0x1000 * rng.randrange(1, 20), to_lock=0x1000 * rng.randrange(1, 20),
                from_gen=rng.randrange(2), to_gen=rng.randrange(2), to_mode=rng.randrange(2),
                to_how=rng.randrange(3), from_site=rng.randrange(1 << 40), held_count=held,
                held_locks=tuple(rng.randrange(1 << 47) for _ in range(4)), held_gens=(0, 1, 2, 3),
                held_modes=(0, 1, 0, 1), comm=rng.choice(["a", "worker", "fifteen-chars-x"]))


def batch_event(ds_id, elements, seq=1, node=""):
    batch = api_pb2.GadgetDataArray(node=node, seq=seq, dataArray=elements)
    return api_pb2.GadgetEvent(type=0, seq=seq, dataSourceID=ds_id, payload=batch.SerializeToString())


def decode_both(ds, events):
    """What a plain decoder and a lazy one make of the same events."""
    plain, lazy = StreamDecoder(), StreamDecoder(lazy_edges=True)
    outputs = {}
    for name, decoder in (("plain", plain), ("lazy", lazy)):
        out = decoder.feed(info_event(info_with(ds)))
        for event in events:
            out += decoder.feed(event)
        outputs[name] = out
    return outputs["plain"], outputs["lazy"], lazy


def records_of(outputs):
    """Outputs with every LockEdgeBatch replaced by its records, in order, and the
    ProcessMeta outputs apart (a batch sends those of its new processes first)."""
    flat, metas = [], []
    for output in outputs:
        if type(output) is ProcessMeta:
            metas.append(output)
        else:
            flat.extend(output.records() if type(output) is LockEdgeBatch else [output])
    return flat, sorted(metas)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
def test_a_uniform_fetch_decodes_to_the_same_records_and_process_metadata(shuffle, big_endian):
    ds, layout = edges_datasource(shuffle=shuffle, big_endian=big_endian)
    ds = with_pod_field(ds)
    rng = random.Random(5)
    values = [dict(random_values(rng), big_endian=big_endian) for _ in range(300)]
    events = [batch_event(0, [element(layout, v, pod="pod-a") for v in values[i:i + 100]], seq=1 + i // 100,
                          node="node-1") for i in range(0, 300, 100)]
    plain, lazy, decoder = decode_both(ds, events)
    assert records_of(lazy) == records_of(plain)
    batches = [o for o in lazy if type(o) is LockEdgeBatch]
    assert len(batches) == 3 and decoder.stats.batched == decoder.stats.records == 300
    for batch, records in zip(batches, [batches[0].records(), batches[1].records(), batches[2].records()]):
        assert batch.keys == [(r.pid, r.process_start, r.session_id, r.from_lock, r.from_gen, r.to_lock, r.to_gen)
                              for r in records]
    metas = [o for o in lazy if type(o) is ProcessMeta]
    assert sorted(m.pid for m in metas) == [100, 200, 300] and {m.pod for m in metas} == {"pod-a"}
    assert [o for o in lazy if type(o) is FetchTick] == [FetchTick("edges", 100)] * 3


def test_elements_with_strings_of_different_lengths_are_walked():
    """In Kubernetes, IG's string fields follow the gadget's structs and differ in
    length from one element to the next: the structs are still decoded at once."""
    ds, layout = edges_datasource()
    ds = with_pod_field(ds)
    rng = random.Random(6)
    pods = ["a", "bb", "a", "pod-" + "x" * 200, ""]  # 200: a 3-byte element length
    values = [random_values(rng, processes=5) for _ in pods]
    events = [batch_event(0, [element(layout, v, pod=pod) for v, pod in zip(values, pods)])]
    plain, lazy, decoder = decode_both(ds, events)
    assert records_of(lazy) == records_of(plain)
    assert decoder.stats.batched == decoder.stats.records == len(pods)
    assert {m.pod for m in records_of(lazy)[1]} <= set(pods)


def test_elements_whose_structs_are_framed_differently_are_decoded_one_by_one():
    ds, layout = edges_datasource()
    rng = random.Random(10)
    elements = [pack(layout, random_values(rng)) for _ in range(3)]
    longer = api_pb2.DataElement(payload=[elements[1].payload[0] + b"\0", elements[1].payload[1]])
    plain, lazy, decoder = decode_both(ds, [batch_event(0, [elements[0], longer, elements[2]])])
    assert lazy == plain and decoder.stats.batched == 0 and decoder.stats.records == 3


def test_elements_too_short_for_the_layout_are_rejected_as_before():
    ds, _ = edges_datasource()
    short = [api_pb2.DataElement(payload=[bytes(8), bytes(8)])] * 4
    plain, lazy, decoder = decode_both(ds, [batch_event(0, short)])
    assert lazy[1:] == plain[1:] == [FetchTick("edges", 4)]  # after the GadgetInfo
    assert decoder.stats.rejected == 4 and decoder.stats.batched == 0


def test_framing_is_found_after_node_and_seq_and_checked_in_every_element():
    elements = [api_pb2.DataElement(payload=[bytes(10), b"", b"xyz"])] * 5
    payload = api_pb2.GadgetDataArray(node="n", seq=7, dataArray=elements).SerializeToString()
    framing = uniform_framing(payload)
    assert framing == ElementFraming(first=5, stride=21, elements=5, payloads=((4, 10), (16, 0), (18, 3)), body=2)
    assert payload[framing.first + framing.stride * 4 + 18:] == b"xyz"
    # a different payload length in the last element: not uniform
    odd = elements[:4] + [api_pb2.DataElement(payload=[bytes(10), b"", b"xy", b"z"])]
    odd_batch = api_pb2.GadgetDataArray(dataArray=odd).SerializeToString()
    assert uniform_framing(odd_batch) is None
    # ...but its first two payloads are framed alike: walked, cut to them
    split = split_elements(odd_batch, leading=2)
    assert split.raws == [b"\x0a\x0a" + bytes(10) + b"\x0a\x00"] * 5 and split.payloads == ((2, 10), (14, 0))
    assert [odd_batch[b:e] for b, e in zip(split.bodies, split.ends)] == [e.SerializeToString() for e in odd]
    assert split_elements(odd_batch, leading=3) is None  # "xyz" and "xy"
    assert uniform_framing(payload + b"\x1a") is None  # a trailing byte
    assert uniform_framing(b"") is None and uniform_framing(b"\x0a\x05ab") is None  # no element, truncated


@pytest.mark.parametrize("pods", [None, ("a", "bb", "")], ids=["strided", "walked"])
def test_every_truncation_and_byte_flip_is_decoded_like_the_plain_decoder_does(pods):
    ds, layout = edges_datasource()
    rng = random.Random(7)
    if pods is None:
        elements = [pack(layout, random_values(rng)) for _ in range(3)]
    else:
        ds = with_pod_field(ds)
        elements = [element(layout, random_values(rng), pod=pod) for pod in pods]
    good = batch_event(0, elements).payload
    variants = [good[:cut] for cut in range(0, len(good), 7)]
    for _ in range(400):
        flipped = bytearray(good)
        flipped[rng.randrange(len(good))] = rng.randrange(256)
        variants.append(bytes(flipped))
    paths = set()
    for payload in variants:
        event = api_pb2.GadgetEvent(type=0, seq=1, dataSourceID=0, payload=payload)
        plain, lazy, decoder = decode_both(ds, [event])
        assert records_of(lazy) == records_of(plain)
        paths.add(decoder.stats.batched > 0)
    assert paths == {True, False}  # both ways were taken


def store_of(outputs, keep_session=None):
    store = LockGraphStore(keep_session)
    for output in outputs:
        if type(output) is LockEdgeBatch:
            store.add_edge_batch(output)
        elif type(output) is LockEdge:
            store.add_edge(output)
    return store


def test_batch_ingest_finds_what_record_ingest_finds():
    ds, layout = edges_datasource()
    rng = random.Random(8)
    values = [random_values(rng) for _ in range(400)]
    values += values[:50]  # edges seen again, the same way: nothing new
    events = [batch_event(0, [pack(layout, v) for v in values[i:i + 150]], seq=1 + i) for i in range(0, 450, 150)]
    plain, lazy, _ = decode_both(ds, events)
    by_record, by_batch = store_of(plain), store_of(lazy)
    for store in (by_record, by_batch):
        assert store.stats.edges_seen == 450
    assert by_batch.analyse() == by_record.analyse() != []
    # some edges were seen by several threads: their observations were compared
    assert any(type(e) is dict for g in by_batch.graphs.values() for e in g.edges.values())
    for key, graph in by_record.graphs.items():
        other = by_batch.graphs[key]
        assert list(other.edges) == list(graph.edges)
        assert all(other.evidence(*edge) == graph.evidence(*edge) for edge in graph.edges)


def test_records_are_decoded_only_for_edges_that_analysis_looks_at():
    ds, layout = edges_datasource()
    chain = [dict(EDGE_VALUES, from_lock=0x1000 * i, to_lock=0x1000 * (i + 1), to_gen=0) for i in range(1, 100)]
    cycle = [dict(EDGE_VALUES, from_lock=0x90000, to_lock=0xA0000, tid=50, to_gen=0, to_mode=0),
             dict(EDGE_VALUES, from_lock=0xA0000, to_lock=0x90000, tid=51, to_gen=0, to_mode=0,
                  held_locks=(0xA0000, 0, 0, 0), held_gens=(0, 0, 0, 0), held_modes=(0, 0, 0, 0))]
    _, lazy, _ = decode_both(ds, [batch_event(0, [pack(layout, v) for v in chain + cycle])])
    (batch,) = [o for o in lazy if type(o) is LockEdgeBatch]
    decoded = []

    def counting(raw):
        decoded.append(raw)
        return batch.decode(raw)

    store = store_of([batch._replace(decode=counting)])
    (finding,) = store.analyse()
    assert finding.kind == "potential-deadlock" and set(finding.threads) == {50, 51}
    assert len(decoded) == 2  # the two edges of the cycle, not the 99 of the chain


def test_session_filter_applies_to_batches():
    ds, layout = edges_datasource()
    rng = random.Random(9)
    _, lazy, _ = decode_both(ds, [batch_event(0, [pack(layout, random_values(rng)) for _ in range(200)])])
    store = store_of(lazy, keep_session=lambda session: session == 200)
    assert [key.pid for key in store.graphs] == [200]
    assert store.stats.edges_seen == sum(1 for o in lazy if type(o) is LockEdgeBatch
                                         for key in o.keys if key[2] == 200)


@pytest.mark.parametrize("lazy", [False, True])
def test_a_process_first_seen_outside_a_container_is_placed_when_one_shows(lazy):
    """IG learns of a new container a moment after its first records: the
    container named by a later record is sent once; after PLACEMENT_WAIT
    without one, the process is taken to run on the host."""
    from igdeadlock.ig.decoder import PLACEMENT_WAIT

    now = [0.0]
    ds, layout = edges_datasource()
    decoder = StreamDecoder(lazy_edges=lazy, clock=lambda: now[0])
    decoder.feed(info_event(info_with(with_pod_field(ds))))

    def metas(pid, pod, seq):
        out = decoder.feed(batch_event(0, [element(layout, dict(EDGE_VALUES, pid=pid), pod)] * 2, seq=seq))
        return [(m.pid, m.pod) for m in out if type(m) is ProcessMeta]

    assert metas(1, "", 1) == [(1, "")]
    assert metas(1, "", 2) == []
    now[0] = PLACEMENT_WAIT / 2
    assert metas(1, "web-1", 3) == [(1, "web-1")]
    assert metas(1, "web-1", 4) == []
    assert metas(2, "", 5) == [(2, "")]
    now[0] += PLACEMENT_WAIT
    assert metas(2, "", 6) == []
    assert metas(2, "late", 7) == []  # settled on the host
