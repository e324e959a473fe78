"""Bad input never crashes the decoder, and every event it cannot use is counted.

A property test (hypothesis) over structured streams, and a seeded mutation
fuzzer that feeds 100,000 random and mutated GadgetEvents in a CI run.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decode import EDGE_VALUES, edges_datasource, pack

from igdeadlock.ig.decoder import StreamDecoder
from igdeadlock.ig.proto import api_pb2
from igdeadlock.records import LockEdgeBatch

FUZZ_CASES = 100_000

DS, LAYOUT = edges_datasource(ds_id=3)
SINGLE = api_pb2.DataSource(id=5, name="dead_pids", type=1, fields=[
    api_pb2.Field(name="pid", fullName="pid", kind=8, offs=0, size=4),
    api_pb2.Field(name="process_start", fullName="process_start", kind=9, offs=8, size=8),
    api_pb2.Field(name="mntns_id", fullName="mntns_id", kind=9, offs=16, size=8),
    api_pb2.Field(name="comm", fullName="comm", kind=13, offs=24, size=16),
])
INFO = api_pb2.GadgetInfo(name="igdeadlock", dataSources=[DS, SINGLE])
VALID_BATCH = api_pb2.GadgetDataArray(dataArray=[pack(LAYOUT, EDGE_VALUES)] * 3).SerializeToString()
VALID_SINGLE = api_pb2.GadgetData(data=api_pb2.DataElement(payload=[bytes(40)])).SerializeToString()


def counters(decoder: StreamDecoder) -> tuple:
    s = decoder.stats
    return (s.records, s.rejected, s.ignored, s.unknown_datasource, s.before_info)


def feed_and_check(decoder: StreamDecoder, event: api_pb2.GadgetEvent) -> None:
    before = counters(decoder)
    outputs = decoder.feed(event)  # must never raise
    for output in outputs:
        if type(output) is LockEdgeBatch:
            output.records()  # nor may decoding a batch's records later
    if event.type == 0:
        ticks = [o for o in outputs if type(o).__name__ == "FetchTick"]
        empty_batch = any(t.count == 0 for t in ticks)
        assert counters(decoder) != before or empty_batch, (event, outputs)


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        choice = rng.randrange(4)
        if choice == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 1 and data:
            del data[rng.randrange(len(data)):]
        elif choice == 2:
            data[rng.randrange(len(data) + 1):0] = rng.randbytes(rng.randrange(1, 16))
        elif data:
            start = rng.randrange(len(data))
            data[start:start + rng.randrange(1, 8)] = b""
    return bytes(data)


@pytest.mark.parametrize("lazy_edges", [False, True])
def test_mutation_fuzzer_100k_events(lazy_edges):
    rng = random.Random(20261125)
    decoder = StreamDecoder(lazy_edges=lazy_edges)
    seeds = [VALID_BATCH, VALID_SINGLE, INFO.SerializeToString(), b""]
    for case in range(FUZZ_CASES):
        kind = rng.random()
        if kind < 0.02:
            event = api_pb2.GadgetEvent(type=4, payload=mutate(INFO.SerializeToString(), rng)
                                        if rng.random() < 0.5 else INFO.SerializeToString())
        elif kind < 0.05:
            event = api_pb2.GadgetEvent(type=rng.choice([1, 2, 3, 2 << 16, 3 << 16, 7 << 16, 99]),
                                        payload=rng.randbytes(rng.randrange(32)))
        else:
            payload = rng.choice(seeds)
            payload = mutate(payload, rng) if rng.random() < 0.8 else payload
            event = api_pb2.GadgetEvent(type=0, seq=rng.choice([case, case + 1, rng.randrange(1 << 32)]),
                                        dataSourceID=rng.choice([3, 3, 3, 5, 5, 9]), payload=payload)
        feed_and_check(decoder, event)
    s = decoder.stats
    assert s.events == FUZZ_CASES
    assert s.records > 0 and s.rejected > 0 and s.unknown_datasource > 0
    assert (s.batched > 0) == lazy_edges


events = st.one_of(
    st.builds(lambda p: api_pb2.GadgetEvent(type=4, payload=p), st.sampled_from([INFO.SerializeToString()])),
    st.builds(lambda t, p: api_pb2.GadgetEvent(type=t, payload=p),
              st.sampled_from([1, 2, 3, 1 << 16, 3 << 16, 6 << 16]), st.binary(max_size=64)),
    st.builds(lambda seq, ds, p: api_pb2.GadgetEvent(type=0, seq=seq, dataSourceID=ds, payload=p),
              st.integers(0, 2**32 - 1), st.sampled_from([3, 5, 7]),
              st.one_of(st.binary(max_size=512), st.sampled_from([VALID_BATCH, VALID_SINGLE]))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=40))
def test_any_event_stream_is_decoded_or_counted(stream):
    decoder = StreamDecoder(lazy_edges=True)
    for event in stream:
        feed_and_check(decoder, event)
    payloads = sum(1 for e in stream if e.type == 0)
    assert decoder.stats.payloads == payloads
