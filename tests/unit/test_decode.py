"""The decoder follows the datasource descriptors, and never crashes on bad input."""

from __future__ import annotations

import struct

import pytest

from igdeadlock.ig.datasource import DataSourceLayout, DecodeError, decode_value
from igdeadlock.ig.decoder import StreamDecoder
from igdeadlock.ig.events import LOG_LEVEL_NAMES
from igdeadlock.ig.proto import api_pb2
from igdeadlock.records import FetchTick, LockEdge, LogMessage, ProcessMeta

U8, U32, U64, CSTRING, BYTES = 6, 8, 9, 13, 14
ARRAY = 0x10000000


def field(name, kind, offs, size, payload=0, flags=0):
    return api_pb2.Field(name=name, fullName=name, kind=kind, offs=offs, size=size, payloadIndex=payload, flags=flags)


def edges_datasource(ds_id=0, shuffle=False, big_endian=False):
    """A datasource shaped like the gadget's edges, laid out by the test itself."""
    key = [("from_lock", U64, 8), ("to_lock", U64, 8), ("context", U64, 8), ("pid", U32, 4), ("tid", U32, 4),
           ("to_mode", U8, 1), ("to_how", U8, 1)]
    value = [("mntns_id", U64, 8), ("process_start", U64, 8), ("session_id", U32, 4), ("from_site", U64, 8),
             ("to_site", U64, 8), ("from_gen", U32, 4), ("to_gen", U32, 4), ("from_mode", U8, 1),
             ("from_kind", U8, 1), ("to_kind", U8, 1), ("held_count", U8, 1), ("comm", CSTRING, 16),
             ("held_locks", U64 | ARRAY, 32), ("held_gens", U32 | ARRAY, 16), ("held_modes", U8 | ARRAY, 4)]
    if shuffle:
        value = list(reversed(value))
    fields, layout = [], {}
    for payload, members in ((0, key), (1, value)):
        offset = 0
        for name, kind, size in members:
            fields.append(field(name, kind, offset, size, payload))
            layout[name] = (payload, offset, size, kind)
            offset += size + 3  # gaps the decoder must skip
    ds = api_pb2.DataSource(id=ds_id, name="edges", type=2, fields=fields, flags=1 if big_endian else 0)
    return ds, layout


def pack(layout, values, big_endian=False):
    order = ">" if big_endian else "<"
    buffers = [bytearray(200), bytearray(300)]
    chars = {U8: "B", U32: "I", U64: "Q"}
    for name, (payload, offset, size, kind) in layout.items():
        value = values[name]
        if kind == CSTRING:
            buffers[payload][offset:offset + size] = value.encode().ljust(size, b"\0")
        elif kind & ARRAY:
            char = chars[kind & ~ARRAY]
            count = size // struct.calcsize(char)
            struct.pack_into(f"{order}{count}{char}", buffers[payload], offset, *value)
        else:
            struct.pack_into(order + chars[kind], buffers[payload], offset, value)
    return api_pb2.DataElement(payload=[bytes(b) for b in buffers])


EDGE_VALUES = dict(from_lock=0x1000, to_lock=0x2000, context=7, pid=42, tid=43, to_mode=1, to_how=0,
                   mntns_id=4026531840, process_start=99, session_id=42, from_site=5, to_site=6, from_gen=0,
                   to_gen=2, from_mode=0, from_kind=1, to_kind=1, held_count=2, comm="worker",
                   held_locks=(0x1000, 0x3000, 0, 0), held_gens=(0, 1, 0, 0), held_modes=(0, 1, 0, 0))


def info_with(*datasources):
    return api_pb2.GadgetInfo(name="igdeadlock", dataSources=list(datasources))


def payload_event(ds_id, elements, seq):
    batch = api_pb2.GadgetDataArray(dataArray=elements)
    return api_pb2.GadgetEvent(type=0, seq=seq, dataSourceID=ds_id, payload=batch.SerializeToString())


def info_event(info):
    return api_pb2.GadgetEvent(type=4, payload=info.SerializeToString())


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
def test_edge_record_follows_the_descriptors(shuffle, big_endian):
    ds, layout = edges_datasource(shuffle=shuffle, big_endian=big_endian)
    decoder = StreamDecoder()
    decoder.feed(info_event(info_with(ds)))
    out = decoder.feed(payload_event(0, [pack(layout, EDGE_VALUES, big_endian)], seq=1))
    meta, edge, tick = out
    assert isinstance(meta, ProcessMeta) and (meta.pid, meta.process_start, meta.pod) == (42, 99, "")
    assert isinstance(edge, LockEdge) and tick == FetchTick("edges", 1)
    assert (edge.from_lock, edge.to_lock, edge.pid, edge.tid, edge.comm) == (0x1000, 0x2000, 42, 43, "worker")
    assert edge.held == ((0x1000, 0, 0), (0x3000, 1, 1))
    assert edge.to_gen == 2 and edge.to_mode == 1


def test_seq_gaps_are_counted_as_server_drops():
    ds, layout = edges_datasource()
    decoder = StreamDecoder()
    decoder.feed(info_event(info_with(ds)))
    for seq in (1, 2, 5, 6, 10):
        decoder.feed(payload_event(0, [pack(layout, EDGE_VALUES)], seq=seq))
    assert decoder.stats.dropped_by_server == 2 + 3
    assert decoder.stats.records == 5


def test_payloads_before_info_unknown_datasources_and_garbage_are_counted():
    ds, layout = edges_datasource()
    decoder = StreamDecoder()
    assert decoder.feed(payload_event(0, [pack(layout, EDGE_VALUES)], seq=1)) == []
    decoder.feed(info_event(info_with(ds)))
    assert decoder.feed(payload_event(9, [pack(layout, EDGE_VALUES)], seq=2)) == []
    garbage = api_pb2.GadgetEvent(type=0, seq=3, dataSourceID=0, payload=b"\xff\xff\xff\x07garbage")
    assert decoder.feed(garbage) == []
    short = api_pb2.DataElement(payload=[b"\0" * 8])
    assert decoder.feed(payload_event(0, [short], seq=4)) == [FetchTick("edges", 1)]
    s = decoder.stats
    assert (s.before_info, s.unknown_datasource, s.rejected, s.records) == (1, 1, 2, 0)


def test_log_events_carry_their_level():
    decoder = StreamDecoder()
    (message,) = decoder.feed(api_pb2.GadgetEvent(type=3 << 16, payload=b"reading event: lost 3 samples"))
    assert message == LogMessage(3, "reading event: lost 3 samples")
    assert LOG_LEVEL_NAMES[message.level] == "warning"


def test_decode_value_kinds():
    assert decode_value(U32 | ARRAY, struct.pack("<3I", 1, 2, 3), "<") == (1, 2, 3)
    assert decode_value(CSTRING, b"abc\0junk", "<") == "abc"
    assert decode_value(BYTES, b"\x01\x02", "<") == b"\x01\x02"
    with pytest.raises(DecodeError):
        decode_value(U64, b"\0" * 4, "<")
    with pytest.raises(DecodeError):
        decode_value(U32 | ARRAY, b"\0" * 5, "<")


def test_overlapping_and_dynamic_fields_are_decoded_one_by_one():
    fields = [
        field("outer", BYTES, 0, 8),
        field("outer.low", U32, 0, 4),
        field("outer.high", U32, 4, 4),
        field("k8s", 0, 0, 0, flags=1),  # an empty parent: skipped
        field("name", 12, 0, 0, payload=1),  # operator-added string: whole payload 1
    ]
    layout = DataSourceLayout.from_proto(api_pb2.DataSource(id=0, name="x", type=1, fields=fields))
    element = api_pb2.DataElement(payload=[struct.pack("<II", 7, 9), b"pod-a"])
    assert layout.decode_element(element) == {
        "outer": struct.pack("<II", 7, 9), "outer.low": 7, "outer.high": 9, "name": "pod-a"}


def waiting_datasource():
    """A datasource shaped like the snapshot's waiting threads: one struct payload,
    then an enrichment field in a payload of its own (which raw records lack)."""
    from igdeadlock.records import WaitingThread

    fields, offset, layout = [], 0, {}
    for name in WaitingThread._fields:
        if name in ("user_saved", "kernel_frames"):
            kind, size = U64 | ARRAY, 6 * 8 if name == "user_saved" else 8 * 8
        else:
            kind, size = (CSTRING, 16) if name == "comm" else (U64, 8)
        if name == "kernel_frames":
            fields.append(field("kernel_frame_count", U64, offset, 8))
            layout["kernel_frame_count"] = offset
            offset += 8
        fields.append(field(name, kind, offset, size))
        layout[name] = offset
        offset += size
    fields.append(field("k8s.podName", 12, 0, 0, payload=1))
    return api_pb2.DataSource(id=0, name="waiting", type=2, fields=fields), layout, offset


def test_records_of_an_iterator_run_here_decode_by_the_datasource_layout():
    from igdeadlock.records import WaitingThread

    ds, layout, size = waiting_datasource()
    decoder = StreamDecoder()
    decoder.set_info(api_pb2.GadgetInfo(dataSources=[ds]))
    record = bytearray(size)
    for name, offset in layout.items():
        if name == "comm":
            record[offset:offset + 4] = b"prog"
        elif name == "kernel_frame_count":
            struct.pack_into("<Q", record, offset, 2)
        elif name in ("user_saved", "kernel_frames"):
            struct.pack_into("<QQ", record, offset, 0xFFFFFFFF81000000, 0x42)
        else:
            struct.pack_into("<Q", record, offset, offset + 1)
    two = bytes(record) * 2
    (first, second) = decoder.raw_records("waiting", two)
    assert isinstance(first, WaitingThread) and first == second
    assert first.comm == "prog" and first.tid == layout["tid"] + 1 and first.futex == layout["futex"] + 1
    assert first.kernel_frames == (0xFFFFFFFF81000000, 0x42)  # cut at its count
    assert first.user_saved[:2] == (0xFFFFFFFF81000000, 0x42)
    assert decoder.raw_records("waiting", two + b"\0" * 5) == [first, first]  # a stray tail is rejected...
    assert decoder.stats.rejected == 1  # ...and counted
    with pytest.raises(DecodeError):
        decoder.raw_records("no_such_datasource", two)
