"""Datasource fields -> typed records.

IG describes every datasource in ``GadgetInfo``: each field has a kind, a
payload index, an offset and a size. Payloads are decoded from those
descriptors only, so a change to a struct in program.bpf.c needs no change
here; the typed records are then built from fields looked up by name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from google.protobuf.message import DecodeError as ProtobufDecodeError

from igdeadlock.proto import api_pb2
from igdeadlock.wire import EVENT_GADGET_INFO, EVENT_PAYLOAD, log_level_of, parse_gadget_info

# Field kinds (api.Kind) and flags (pkg/datasource/field.go).
KIND_BOOL, KIND_STRING, KIND_CSTRING, KIND_BYTES = 1, 12, 13, 14
KIND_ARRAY_FLAG = 0x10000000
FIELD_FLAG_EMPTY = 1
DATASOURCE_FLAG_BIG_ENDIAN = 1
DATASOURCE_TYPE_SINGLE, DATASOURCE_TYPE_ARRAY = 1, 2

# kind -> (struct format character, size)
_SCALARS: Dict[int, Tuple[str, int]] = {
    1: ("?", 1),
    2: ("b", 1), 3: ("h", 2), 4: ("i", 4), 5: ("q", 8),
    6: ("B", 1), 7: ("H", 2), 8: ("I", 4), 9: ("Q", 8),
    10: ("f", 4), 11: ("d", 8),
}

Value = Union[int, float, bool, str, bytes, Tuple[Any, ...]]


class DecodeError(ValueError):
    """A payload does not match its datasource description."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    payload_index: int
    offset: int
    size: int
    kind: int

    def decode(self, payloads: List[bytes], byte_order: str) -> Value:
        if self.payload_index >= len(payloads):
            raise DecodeError(f"field {self.name}: payload {self.payload_index} missing")
        buf = payloads[self.payload_index]
        if self.size:
            end = self.offset + self.size
            if end > len(buf):
                raise DecodeError(f"field {self.name}: needs {end} bytes, payload has {len(buf)}")
            raw = buf[self.offset:end]
        else:
            raw = buf  # operator-added field: the whole payload
        return decode_value(self.kind, raw, byte_order, self.name)


def decode_value(kind: int, raw: bytes, byte_order: str, name: str = "?") -> Value:
    if kind & KIND_ARRAY_FLAG:
        element = kind & ~KIND_ARRAY_FLAG
        if element not in _SCALARS:
            raise DecodeError(f"field {name}: unsupported array kind {element}")
        char, size = _SCALARS[element]
        if len(raw) % size:
            raise DecodeError(f"field {name}: {len(raw)} bytes is not a whole {size}-byte array")
        return struct.unpack(f"{byte_order}{len(raw) // size}{char}", raw)
    if kind in _SCALARS:
        char, size = _SCALARS[kind]
        if len(raw) != size:
            raise DecodeError(f"field {name}: {len(raw)} bytes for a {size}-byte value")
        return struct.unpack(byte_order + char, raw)[0]
    if kind == KIND_STRING:
        return raw.decode("utf-8", "replace")
    if kind == KIND_CSTRING:
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    if kind == KIND_BYTES:
        return bytes(raw)
    raise DecodeError(f"field {name}: unknown kind {kind}")


class _PayloadPlan:
    """Decodes the fixed-size fields of one payload buffer with a single unpack.

    Fields that overlap another one (a nested struct and its members) or that
    have no fixed size (operator-added fields) are decoded one by one.
    """

    def __init__(self, fields: List[FieldSpec], byte_order: str) -> None:
        fmt = [byte_order]
        self.packed: List[Tuple[str, int, int]] = []  # (name, kind, item count)
        self.single: List[FieldSpec] = []
        cursor = 0
        for f in sorted(fields, key=lambda f: (f.offset, -f.size)):
            code = self._code(f)
            if code is None or f.offset < cursor:
                self.single.append(f)
                continue
            if f.offset > cursor:
                fmt.append(f"{f.offset - cursor}x")
            fmt.append(code[0])
            self.packed.append((f.name, f.kind, code[1]))
            cursor = f.offset + f.size
        self.struct = struct.Struct("".join(fmt))
        self.byte_order = byte_order

    @staticmethod
    def _code(f: FieldSpec) -> Optional[Tuple[str, int]]:
        if f.size == 0:
            return None
        if f.kind & KIND_ARRAY_FLAG:
            element = _SCALARS.get(f.kind & ~KIND_ARRAY_FLAG)
            if element is None or f.size % element[1]:
                return None
            count = f.size // element[1]
            return f"{count}{element[0]}", count
        if f.kind in _SCALARS:
            char, size = _SCALARS[f.kind]
            return (char, 1) if size == f.size else None
        if f.kind in (KIND_STRING, KIND_CSTRING, KIND_BYTES):
            return f"{f.size}s", 1
        return None

    def decode(self, payloads: List[bytes], index: int, out: Dict[str, Value]) -> None:
        if self.packed:
            buf = payloads[index] if index < len(payloads) else b""
            if len(buf) < self.struct.size:
                raise DecodeError(f"payload {index}: {len(buf)} bytes, fields need {self.struct.size}")
            values = self.struct.unpack_from(buf)
            pos = 0
            for name, kind, count in self.packed:
                if kind & KIND_ARRAY_FLAG:
                    out[name] = values[pos:pos + count]
                    pos += count
                    continue
                value = values[pos]
                pos += 1
                if kind == KIND_CSTRING:
                    value = value.split(b"\0", 1)[0].decode("utf-8", "replace")
                elif kind == KIND_STRING:
                    value = value.decode("utf-8", "replace")
                out[name] = value
        for f in self.single:
            out[f.name] = f.decode(payloads, self.byte_order)


@dataclass(frozen=True)
class DataSourceLayout:
    id: int
    name: str
    type: int
    byte_order: str
    fields: Tuple[FieldSpec, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, ds: api_pb2.DataSource) -> "DataSourceLayout":
        fields = tuple(
            FieldSpec(f.fullName or f.name, f.payloadIndex, f.offs, f.size, int(f.kind))
            for f in ds.fields
            if not f.flags & FIELD_FLAG_EMPTY
        )
        order = ">" if ds.flags & DATASOURCE_FLAG_BIG_ENDIAN else "<"
        return cls(ds.id, ds.name, ds.type, order, fields, dict(ds.annotations))

    @cached_property
    def _plans(self) -> Tuple[Tuple[int, _PayloadPlan], ...]:
        by_payload: Dict[int, List[FieldSpec]] = {}
        for f in self.fields:
            by_payload.setdefault(f.payload_index, []).append(f)
        return tuple((index, _PayloadPlan(fields, self.byte_order)) for index, fields in sorted(by_payload.items()))

    def decode_element(self, element: api_pb2.DataElement) -> Dict[str, Value]:
        payloads = list(element.payload)
        out: Dict[str, Value] = {}
        try:
            for index, plan in self._plans:
                plan.decode(payloads, index, out)
        except struct.error as exc:
            raise DecodeError(f"datasource {self.name}: {exc}") from exc
        return out

    def parse_payload(self, payload: bytes) -> List[api_pb2.DataElement]:
        """The elements of one payload event (one for single, many for arrays)."""
        try:
            if self.type == DATASOURCE_TYPE_ARRAY:
                batch = api_pb2.GadgetDataArray()
                batch.ParseFromString(payload)
                return list(batch.dataArray)
            single = api_pb2.GadgetData()
            single.ParseFromString(payload)
            return [single.data]
        except ProtobufDecodeError as exc:
            raise DecodeError(f"datasource {self.name}: bad payload: {exc}") from exc


# --- typed records -------------------------------------------------------------

LOCK_MODE_NAMES = {0: "write", 1: "read"}
LOCK_KIND_NAMES = {0: "mutex", 1: "rwlock", 2: "spinlock"}
ACQUIRE_HOW_NAMES = {0: "blocking", 1: "try", 2: "timed"}


@dataclass(frozen=True)
class HeldLock:
    lock: int
    gen: int
    mode: int


@dataclass(frozen=True)
class LockEdge:
    """Thread ``tid`` requested ``to_lock`` while holding ``from_lock`` (and ``held``)."""

    pid: int
    tid: int
    comm: str
    mntns_id: int
    process_start: int
    session_id: int
    from_lock: int
    from_gen: int
    from_mode: int
    from_kind: int
    from_site: int
    to_lock: int
    to_gen: int
    to_mode: int
    to_kind: int
    to_how: int
    to_site: int
    held: Tuple[HeldLock, ...]


@dataclass(frozen=True)
class ProcessExit:
    pid: int
    process_start: int
    mntns_id: int
    comm: str


@dataclass(frozen=True)
class StackTrace:
    """An acquisition site: frames as (file_id, offset); file_id 0 = raw address."""

    site: int
    pid: int
    frames: Tuple[Tuple[int, int], ...]


@dataclass(frozen=True)
class MappedFile:
    file_id: int
    inode: int
    device: int
    path: str


# keys of the gadget's `counters` map (STAT_* in program.bpf.c)
COUNTER_NAMES = {
    0: "held_lock_overflow",
    1: "thread_map_full",
    2: "edge_map_full",
    3: "stack_map_full",
    4: "generation_map_full",
    5: "blocked_map_full",
}


@dataclass(frozen=True)
class Counter:
    """How often the gadget could not track something, since the last fetch."""

    name: str
    count: int


@dataclass(frozen=True)
class BlockedThread:
    """Thread ``tid`` is blocked in a futex wait for ``lock`` (seen at a fetch)."""

    pid: int
    tid: int
    comm: str
    mntns_id: int
    process_start: int
    session_id: int
    lock: int
    gen: int
    mode: int
    kind: int
    how: int
    site: int
    since: int  # boot time (ns) the wait started
    observed: int  # boot time (ns) of the wait that made the record
    owner_tid: int  # glibc's owner of the lock, 0 if unknown
    held: Tuple[HeldLock, ...]


@dataclass(frozen=True)
class ThreadResumed:
    """A thread reported blocked is not waiting any more."""

    pid: int
    tid: int
    lock: int


@dataclass(frozen=True)
class FetchTick:
    """A map-iterator datasource delivered one fetch (possibly empty)."""

    datasource: str
    count: int


@dataclass(frozen=True)
class LogMessage:
    level: int
    text: str

    @property
    def level_name(self) -> str:
        from igdeadlock.wire import LOG_LEVEL_NAMES

        return LOG_LEVEL_NAMES[self.level] if self.level < len(LOG_LEVEL_NAMES) else str(self.level)


Record = Union[LockEdge, ProcessExit, StackTrace, MappedFile, Counter, BlockedThread, ThreadResumed]


def _int(values: Mapping[str, Value], name: str) -> int:
    value = values[name]
    if not isinstance(value, int):
        raise DecodeError(f"field {name}: expected an integer, got {type(value).__name__}")
    return value


def _ints(values: Mapping[str, Value], name: str) -> Tuple[int, ...]:
    value = values[name]
    if not isinstance(value, tuple):
        raise DecodeError(f"field {name}: expected an array")
    return value


def _text(values: Mapping[str, Value], name: str) -> str:
    value = values.get(name, "")
    return value if isinstance(value, str) else ""


def _held(v: Mapping[str, Value]) -> Tuple[HeldLock, ...]:
    locks, gens, modes = _ints(v, "held_locks"), _ints(v, "held_gens"), _ints(v, "held_modes")
    count = min(_int(v, "held_count"), len(locks), len(gens), len(modes))
    return tuple(HeldLock(lock, gen, mode) for lock, gen, mode in zip(locks[:count], gens[:count], modes[:count]))


def lock_edge_from_fields(v: Mapping[str, Value]) -> LockEdge:
    held = _held(v)
    return LockEdge(
        pid=_int(v, "pid"),
        tid=_int(v, "tid"),
        comm=_text(v, "comm"),
        mntns_id=_int(v, "mntns_id"),
        process_start=_int(v, "process_start"),
        session_id=_int(v, "session_id"),
        from_lock=_int(v, "from_lock"),
        from_gen=_int(v, "from_gen"),
        from_mode=_int(v, "from_mode"),
        from_kind=_int(v, "from_kind"),
        from_site=_int(v, "from_site"),
        to_lock=_int(v, "to_lock"),
        to_gen=_int(v, "to_gen"),
        to_mode=_int(v, "to_mode"),
        to_kind=_int(v, "to_kind"),
        to_how=_int(v, "to_how"),
        to_site=_int(v, "to_site"),
        held=held,
    )


def blocked_thread_from_fields(v: Mapping[str, Value]) -> BlockedThread:
    return BlockedThread(
        pid=_int(v, "pid"),
        tid=_int(v, "tid"),
        comm=_text(v, "comm"),
        mntns_id=_int(v, "mntns_id"),
        process_start=_int(v, "process_start"),
        session_id=_int(v, "session_id"),
        lock=_int(v, "lock"),
        gen=_int(v, "gen"),
        mode=_int(v, "mode"),
        kind=_int(v, "kind"),
        how=_int(v, "how"),
        site=_int(v, "site"),
        since=_int(v, "since"),
        observed=_int(v, "observed"),
        owner_tid=_int(v, "owner_tid"),
        held=_held(v),
    )


def thread_resumed_from_fields(v: Mapping[str, Value]) -> ThreadResumed:
    return ThreadResumed(pid=_int(v, "pid"), tid=_int(v, "tid"), lock=_int(v, "lock"))


def process_exit_from_fields(v: Mapping[str, Value]) -> ProcessExit:
    return ProcessExit(
        pid=_int(v, "pid"),
        process_start=_int(v, "process_start"),
        mntns_id=_int(v, "mntns_id"),
        comm=_text(v, "comm"),
    )


def stack_trace_from_fields(v: Mapping[str, Value]) -> StackTrace:
    offsets = _ints(v, "frame_offsets")
    files = _ints(v, "frame_files")
    count = min(_int(v, "frame_count"), len(offsets), len(files))
    return StackTrace(
        site=_int(v, "site"),
        pid=_int(v, "stack_pid"),
        frames=tuple(zip(files[:count], offsets[:count])),
    )


def mapped_file_from_fields(v: Mapping[str, Value]) -> MappedFile:
    return MappedFile(
        file_id=_int(v, "file_id"),
        inode=_int(v, "inode"),
        device=_int(v, "device"),
        path=_text(v, "path"),
    )


def counter_from_fields(v: Mapping[str, Value]) -> Counter:
    index = _int(v, "counter")
    return Counter(name=COUNTER_NAMES.get(index, f"counter_{index}"), count=_int(v, "count"))


# datasource name -> record builder
RECORD_BUILDERS: Dict[str, Callable[[Mapping[str, Value]], Record]] = {
    "edges": lock_edge_from_fields,
    "dead_pids": process_exit_from_fields,
    "stacks": stack_trace_from_fields,
    "files": mapped_file_from_fields,
    "counters": counter_from_fields,
    "blocked": blocked_thread_from_fields,
    "resumed": thread_resumed_from_fields,
}


@dataclass
class DecodeStats:
    events: int = 0
    payloads: int = 0
    records: int = 0
    dropped_by_server: int = 0  # gaps in the payload sequence numbers
    rejected: int = 0  # payloads or elements that did not decode
    unknown_datasource: int = 0
    before_info: int = 0


Output = Union[Record, FetchTick, LogMessage, api_pb2.GadgetInfo]


class StreamDecoder:
    """Turns one RunGadget event stream into records, counting what it cannot use.

    Never raises on bad input: every event it cannot use is counted in ``stats``
    (a whole batch that does not parse counts once per batch).
    """

    def __init__(self, builders: Optional[Mapping[str, Callable[[Mapping[str, Value]], Record]]] = None) -> None:
        self.builders = dict(RECORD_BUILDERS if builders is None else builders)
        self.stats = DecodeStats()
        self.info: Optional[api_pb2.GadgetInfo] = None
        self.layouts: Dict[int, DataSourceLayout] = {}
        self._last_seq: Optional[int] = None

    def set_info(self, info: api_pb2.GadgetInfo) -> None:
        self.info = info
        layouts: Dict[int, DataSourceLayout] = {}
        for ds in info.dataSources:
            try:
                layouts[ds.id] = DataSourceLayout.from_proto(ds)
            except (ValueError, TypeError):
                continue
        self.layouts = layouts

    def feed(self, event: api_pb2.GadgetEvent) -> List[Output]:
        self.stats.events += 1
        level = log_level_of(event.type)
        if level is not None:
            return [LogMessage(level, event.payload.decode("utf-8", "replace"))]
        if event.type == EVENT_GADGET_INFO:
            try:
                info = parse_gadget_info(event.payload)
            except ProtobufDecodeError:
                self.stats.rejected += 1
                return []
            self.set_info(info)
            return [info]
        if event.type != EVENT_PAYLOAD:
            return []  # result/done/job-id events carry nothing for us
        return self._payload(event)

    def _payload(self, event: api_pb2.GadgetEvent) -> List[Output]:
        self.stats.payloads += 1
        if self._last_seq is not None and event.seq > self._last_seq + 1:
            self.stats.dropped_by_server += event.seq - self._last_seq - 1
        if self._last_seq is None or event.seq > self._last_seq:
            self._last_seq = event.seq
        if self.info is None:
            self.stats.before_info += 1
            return []
        layout = self.layouts.get(event.dataSourceID)
        if layout is None:
            self.stats.unknown_datasource += 1
            return []
        try:
            elements = layout.parse_payload(event.payload)
        except DecodeError:
            self.stats.rejected += 1
            return []
        out: List[Output] = []
        builder = self.builders.get(layout.name)
        if builder is not None:
            for element in elements:
                try:
                    out.append(builder(layout.decode_element(element)))
                except (DecodeError, KeyError, TypeError, ValueError):
                    self.stats.rejected += 1
            self.stats.records += len(out)
        if layout.type == DATASOURCE_TYPE_ARRAY:
            out.append(FetchTick(layout.name, len(elements)))
        return out

    def decode_all(self, events: Iterable[api_pb2.GadgetEvent]) -> List[Output]:
        out: List[Output] = []
        for event in events:
            out.extend(self.feed(event))
        return out
