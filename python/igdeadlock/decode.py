"""Datasource fields -> typed records.

IG describes every datasource in ``GadgetInfo``: each field has a kind, a
payload index, an offset and a size. Payloads are decoded from those
descriptors only, so a change to a struct in program.bpf.c needs no change
here; the typed records are then built from fields looked up by name.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from operator import itemgetter, sub
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from google.protobuf.message import DecodeError as ProtobufDecodeError

from igdeadlock.proto import api_pb2
from igdeadlock.events import EVENT_GADGET_INFO, EVENT_PAYLOAD, LOG_LEVEL_NAMES, log_level_of, parse_gadget_info

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
    def _all_fields(self) -> Tuple[Tuple[str, ...], Callable[[api_pb2.DataElement], Tuple[Value, ...]]]:
        names = tuple(f.name for f in self.fields)
        return names, compile_extractor(self, [(name, None) for name in names])

    def decode_element(self, element: api_pb2.DataElement) -> Dict[str, Value]:
        """Every field of one element, by name."""
        names, extract = self._all_fields
        try:
            return dict(zip(names, extract(element)))
        except (IndexError, struct.error) as exc:
            raise DecodeError(f"datasource {self.name}: {exc}") from exc

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
#
# Each record type declares the fields it needs (by name and category); the
# decoder compiles, per datasource layout, one function that unpacks exactly
# those fields from an element. Records are named tuples: cheap to build.

LOCK_MODE_NAMES = {0: "write", 1: "read"}
LOCK_KIND_NAMES = {0: "mutex", 1: "rwlock", 2: "spinlock"}
ACQUIRE_HOW_NAMES = {0: "blocking", 1: "try", 2: "timed"}


class HeldLock(NamedTuple):
    """A lock held by a thread. Records carry plain (lock, gen, mode) triples,
    which compare equal to these."""

    lock: int
    gen: int
    mode: int


class LockEdge(NamedTuple):
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
    held: Tuple[Tuple[int, int, int], ...]  # (lock, gen, mode) triples, as HeldLock


class LockEdgeBatch(NamedTuple):
    """The edges of one fetch, decoded only as far as ingest needs.

    ``keys[i]`` is (pid, process_start, session_id, from_lock, from_gen, to_lock,
    to_gen) of record i and ``raws[i]`` its element as sent; ``decode(raws[i])``
    makes the whole LockEdge. Most edges are new and never take part in a cycle,
    so most records are never decoded further (the decoder sends these only when
    asked to, with ``StreamDecoder(lazy_edges=True)``)."""

    keys: List[Tuple[int, ...]]
    raws: List[bytes]
    decode: Callable[[bytes], LockEdge]

    def records(self) -> List[LockEdge]:
        return [self.decode(raw) for raw in self.raws]


EDGE_KEY_FIELDS = ("pid", "process_start", "session_id", "from_lock", "from_gen", "to_lock", "to_gen")


class ProcessExit(NamedTuple):
    pid: int
    process_start: int
    mntns_id: int
    comm: str


class StackTrace(NamedTuple):
    """An acquisition site: frames as (file_id, offset); file_id 0 = raw address."""

    site: int
    pid: int
    frames: Tuple[Tuple[int, int], ...]


class MappedFile(NamedTuple):
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
    6: "tree_map_full",
}


class Counter(NamedTuple):
    """How often the gadget could not track something, since the last fetch."""

    name: str
    count: int


class BlockedThread(NamedTuple):
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
    held: Tuple[Tuple[int, int, int], ...]  # (lock, gen, mode) triples, as HeldLock


PROCESS_EXEC, PROCESS_FORK = 0, 1  # ProcessEvent.event (PROCESS_* in program.bpf.c)


class ProcessEvent(NamedTuple):
    """A process started a program (exec), or joined the traced tree (fork):
    the C library it uses may need uprobes of its own."""

    pid: int
    parent_pid: int
    process_start: int
    mntns_id: int
    event: int
    paused: int  # stopped (SIGSTOP) until the client has probed it and continues it
    comm: str
    exe: str  # the file execve was given (exec events)


class ThreadResumed(NamedTuple):
    """A thread reported blocked is not waiting any more."""

    pid: int
    tid: int
    lock: int


class ProcessMeta(NamedTuple):
    """Where a process runs, from IG's enrichment (empty strings when unknown).

    Sent once per process, with its first edge or blocked-thread record."""

    pid: int
    process_start: int
    mntns_id: int
    node: str
    namespace: str
    pod: str
    container: str
    runtime_container: str
    container_id: str  # the runtime's id of the container


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
        return LOG_LEVEL_NAMES[self.level] if self.level < len(LOG_LEVEL_NAMES) else str(self.level)


Record = Union[LockEdge, ProcessExit, StackTrace, MappedFile, Counter, BlockedThread, ThreadResumed, ProcessMeta,
               ProcessEvent]

INT, TEXT, INTS = "int", "text", "ints"  # field categories a record can ask for
_INT_KINDS = frozenset(range(1, 10))  # bool and the integer kinds
_TEXT_KINDS = frozenset((KIND_STRING, KIND_CSTRING))


@dataclass(frozen=True)
class RecordSchema:
    """The fields a record type is built from, in order, and how to build it.

    ``per_process``: the record starts with pid, tid, comm, mntns_id and
    process_start; the decoder also sends a ProcessMeta the first time it sees
    a process in it."""

    fields: Tuple[Tuple[str, str], ...]  # (field name, category)
    make: Callable[[Tuple[Value, ...]], Record]
    per_process: bool = False
    batch_keys: Tuple[str, ...] = ()  # integer fields a LockEdgeBatch decodes eagerly (edges only)


# IG's enrichment fields (empty outside Kubernetes or without a container runtime)
META_FIELDS = (("k8s.node", TEXT), ("k8s.namespace", TEXT), ("k8s.podName", TEXT),
               ("k8s.containerName", TEXT), ("runtime.containerName", TEXT), ("runtime.containerId", TEXT))


def _held(count: int, locks: Sequence[int], gens: Sequence[int], modes: Sequence[int]
          ) -> Tuple[Tuple[int, int, int], ...]:
    if count == 1:  # the common case: one lock held when the next is requested
        return ((locks[0], gens[0], modes[0]),)
    return tuple(zip(locks[:count], gens[:count], modes[:count]))


_HELD_FIELDS = (("held_count", INT), ("held_locks", INTS), ("held_gens", INTS), ("held_modes", INTS))

RECORD_SCHEMAS: Dict[str, RecordSchema] = {
    "edges": RecordSchema(
        tuple((name, TEXT if name == "comm" else INT) for name in LockEdge._fields[:-1]) + _HELD_FIELDS,
        lambda v: LockEdge(*v[:17], _held(*v[17:])),
        per_process=True,
        batch_keys=EDGE_KEY_FIELDS,
    ),
    "blocked": RecordSchema(
        tuple((name, TEXT if name == "comm" else INT) for name in BlockedThread._fields[:-1]) + _HELD_FIELDS,
        lambda v: BlockedThread(*v[:15], _held(*v[15:])),
        per_process=True,
    ),
    "resumed": RecordSchema(tuple((name, INT) for name in ThreadResumed._fields), ThreadResumed._make),
    "processes": RecordSchema(
        tuple((name, TEXT if name in ("comm", "exe") else INT) for name in ProcessEvent._fields), ProcessEvent._make),
    "dead_pids": RecordSchema(
        (("pid", INT), ("process_start", INT), ("mntns_id", INT), ("comm", TEXT)), ProcessExit._make),
    "stacks": RecordSchema(
        (("site", INT), ("stack_pid", INT), ("frame_count", INT), ("frame_files", INTS), ("frame_offsets", INTS)),
        lambda v: StackTrace(v[0], v[1], tuple(zip(v[3][:v[2]], v[4][:v[2]]))),
    ),
    "files": RecordSchema(
        (("file_id", INT), ("inode", INT), ("device", INT), ("path", TEXT)), MappedFile._make),
    "counters": RecordSchema(
        (("counter", INT), ("count", INT)),
        lambda v: Counter(COUNTER_NAMES.get(v[0], f"counter_{v[0]}"), v[1]),
    ),
}


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _view(raw: bytes, code: str) -> memoryview:
    return memoryview(raw).cast(code)


_NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"


def compile_extractor(layout: DataSourceLayout, fields: Sequence[Tuple[str, Optional[str]]],
                      optional: bool = False, raw: bool = False) -> Callable[[Any], Tuple[Value, ...]]:
    """A function: element -> the values of ``fields`` (name, category or None
    for any kind), in order. Fixed-size fields of a payload are unpacked at once.

    Raises DecodeError when the layout lacks a field or gives it another
    kind: then no element of that datasource can make a record. With
    ``optional``, a missing field (or its missing payload) reads as "" instead.
    With ``raw``, the function takes an element's bytes as sent and ``layout``
    is a :func:`raw_layout`.
    """
    specs = {f.name: f for f in layout.fields}
    namespace: Dict[str, object] = {"_cstring": _cstring, "_text": _text, "_view": _view}
    wanted: Dict[int, List[Tuple[FieldSpec, int]]] = {}
    for position, (name, category) in enumerate(fields):
        spec = specs.get(name)
        if spec is None and optional:
            wanted.setdefault(-1, []).append((FieldSpec(name, -1, 0, 0, KIND_STRING), position))
            continue
        if spec is None:
            raise DecodeError(f"datasource {layout.name} has no field {name}")
        kind = spec.kind & ~KIND_ARRAY_FLAG if spec.kind & KIND_ARRAY_FLAG else spec.kind
        is_array = bool(spec.kind & KIND_ARRAY_FLAG)
        ok = {INT: not is_array and kind in _INT_KINDS and spec.size > 0,
              INTS: is_array and kind in _INT_KINDS and spec.size > 0,
              TEXT: not is_array and kind in _TEXT_KINDS,
              None: kind in _SCALARS or (not is_array and kind in (KIND_STRING, KIND_CSTRING, KIND_BYTES))}[category]
        if not ok:
            raise DecodeError(f"datasource {layout.name}: field {name} has kind {spec.kind}, not {category}")
        wanted.setdefault(spec.payload_index, []).append((spec, position))

    expressions: List[str] = [""] * len(fields)
    lines = ["def extract(element):", "    p = (element,)" if raw else "    p = element.payload"]
    for position in (p for _, p in wanted.pop(-1, [])):
        expressions[position] = "''"
    for index, members in sorted(wanted.items()):
        fmt, cursor, item = [layout.byte_order], 0, 0
        members.sort(key=lambda m: m[0].offset)
        unpacked = []
        for spec, position in members:
            if spec.size == 0 and optional:
                expressions[position] = f"(_text(p[{index}]) if len(p) > {index} else '')"
                continue
            if spec.size == 0 or spec.offset < cursor:
                # an operator-added field (the whole payload), or one that overlaps
                # another wanted field (a nested struct): decode it on its own
                namespace[f"f{position}"] = spec
                expressions[position] = f"f{position}.decode(list(p), {layout.byte_order!r})"
                continue
            if spec.offset > cursor:
                fmt.append(f"{spec.offset - cursor}x")
            if spec.kind & KIND_ARRAY_FLAG:
                char, size = _SCALARS[spec.kind & ~KIND_ARRAY_FLAG]
                count = spec.size // size
                if fields[position][1] == INTS and layout.byte_order == _NATIVE_ORDER and char != "?":
                    # records read only the first few items: view the bytes instead of
                    # turning every item into an int
                    fmt.append(f"{spec.size}s")
                    expressions[position] = f"_view(a{index}[{item}], {char!r})"
                    item += 1
                else:
                    fmt.append(f"{count}{char}")
                    expressions[position] = f"a{index}[{item}:{item + count}]"
                    item += count
            elif spec.kind in (KIND_STRING, KIND_CSTRING, KIND_BYTES):
                fmt.append(f"{spec.size}s")
                convert = {KIND_CSTRING: "_cstring", KIND_STRING: "_text", KIND_BYTES: ""}[spec.kind]
                expressions[position] = f"{convert}(a{index}[{item}])"
                item += 1
            else:
                char, size = _SCALARS[spec.kind]
                if size != spec.size:
                    raise DecodeError(f"datasource {layout.name}: field {spec.name} is {spec.size} bytes")
                fmt.append(char)
                expressions[position] = f"a{index}[{item}]"
                item += 1
            unpacked.append(spec)
            cursor = spec.offset + spec.size
        if unpacked:
            namespace[f"u{index}"] = struct.Struct("".join(fmt)).unpack_from
            lines.append(f"    a{index} = u{index}(p[{index}])")
    lines.append("    return (" + "".join(e + ", " for e in expressions) + ")")
    # The generated code names only local slots and integer positions.
    exec(compile("\n".join(lines), f"<extract {layout.name}>", "exec"), namespace)
    return namespace["extract"]  # type: ignore[return-value]


# --- whole batches ---------------------------------------------------------------
#
# A map-iterator fetch arrives as one serialized GadgetDataArray. A record is
# made of its element's leading payloads (the gadget's fixed-size structs);
# when those are framed alike in every element, the fields ingest needs are
# unpacked for all elements at once, and each element's leading payloads are
# kept as bytes to decode in full later. The elements lie at a fixed stride
# when they are framed alike as a whole (always on one host); otherwise (IG's
# Kubernetes fields, strings of different lengths, follow the leading payloads)
# the element boundaries are walked.

_ARRAY_ELEMENT_TAG = 0x1A  # GadgetDataArray.dataArray: field 3, length-delimited
_PAYLOAD_TAG = 0x0A  # DataElement.payload: field 1, length-delimited
_NODE_TAG, _SEQ_TAG = 0x0A, 0x10  # GadgetDataArray.node and .seq, sent before the elements


class ElementFraming(NamedTuple):
    first: int  # where the first element starts in the batch
    stride: int  # bytes per element, its own tag and length included
    count: int
    payloads: Tuple[Tuple[int, int], ...]  # (offset in the element, size) of each payload
    body: int  # where the element's first payload starts, in the element


class BatchSplit(NamedTuple):
    """The elements of a batch, cut to their leading payloads (framed alike)."""

    raws: List[bytes]  # element i's bytes from (at least) its leading payloads, as sent
    payloads: Tuple[Tuple[int, int], ...]  # (offset in a raw, size) of each leading payload
    joined: Any  # the raws end to end (a buffer)
    bodies: Sequence[int]  # where element i's first payload starts in the batch
    ends: Sequence[int]  # where element i ends in the batch


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise IndexError("varint longer than 10 bytes")


def _first_element(batch: bytes) -> Optional[int]:
    """Where the elements start: after the node and seq fields, which come first."""
    pos, end = 0, len(batch)
    while pos < end and batch[pos] != _ARRAY_ELEMENT_TAG:
        if batch[pos] == _NODE_TAG:
            size, pos = _varint(batch, pos + 1)
            pos += size
        elif batch[pos] == _SEQ_TAG:
            pos = _varint(batch, pos + 1)[1]
        else:
            return None
    return pos if pos < end else None


def _payload_framing(batch: bytes, body: int, end: int, count: Optional[int] = None
                     ) -> Optional[Tuple[List[int], List[Tuple[int, int]], int]]:
    """The first ``count`` payloads (all if None) of the element body batch[body:end]:
    the positions of their tag and length bytes, (offset, size) of each, and
    where they end; offsets are relative to ``body``."""
    framing: List[int] = []
    payloads: List[Tuple[int, int]] = []
    pos = body
    while pos < end and (count is None or len(payloads) < count):
        if batch[pos] != _PAYLOAD_TAG:
            return None
        length, data = _varint(batch, pos + 1)
        framing.extend(range(pos - body, data - body))
        payloads.append((data - body, length))
        pos = data + length
    if pos > end or (count is not None and len(payloads) < count) or (count is None and pos != end):
        return None
    return framing, payloads, pos - body


def _alike(data: bytes, stride: int, positions: Iterable[int], start: int = 0) -> bool:
    """Every stride-long piece of ``data[start:]`` has the same byte at each
    position (one strided slice per position)."""
    count = (len(data) - start) // stride
    return all(data[start + at::stride] == data[start + at:start + at + 1] * count for at in positions)


def uniform_framing(batch: bytes) -> Optional[ElementFraming]:
    """How the elements of a serialized GadgetDataArray lie, if they all lie alike.

    Every tag and length byte of the first element is compared with the same
    byte of every other element, so when this returns, each element parses
    exactly like the first one.
    """
    try:
        first = _first_element(batch)
        if first is None:
            return None
        size, body = _varint(batch, first + 1)
        inner = _payload_framing(batch, body, body + size)
    except IndexError:
        return None
    stride = body + size - first
    if inner is None or (len(batch) - first) % stride:
        return None
    framing, payloads, _ = inner
    header = body - first
    if not _alike(batch, stride, chain(range(header), (header + at for at in framing)), first):
        return None
    return ElementFraming(first, stride, (len(batch) - first) // stride,
                         tuple((header + offset, length) for offset, length in payloads), header)


def split_elements(batch: bytes, leading: int) -> Optional[BatchSplit]:
    """The elements of a serialized GadgetDataArray, each cut to its first
    ``leading`` payloads, if those are framed alike in every element; None if
    they are not or the batch does not parse (then elements are decoded one by one)."""
    framing = uniform_framing(batch)
    if framing is not None:
        if len(framing.payloads) < leading:
            return None
        # whole elements: they lie end to end in the batch already
        first, stride, end = framing.first, framing.stride, len(batch)
        raws = [batch[at:at + stride] for at in range(first, end, stride)]
        return BatchSplit(raws, framing.payloads[:leading], memoryview(batch)[first:],
                          range(first + framing.body, end, stride), range(first + stride, end + 1, stride))
    return _walk_elements(batch, leading)


def _walk_elements(batch: bytes, leading: int) -> Optional[BatchSplit]:
    bodies: List[int] = []
    ends: List[int] = []
    end = len(batch)
    try:
        pos = _first_element(batch)
        if pos is None:
            return None
        while pos < end:  # one element per turn: its tag, its length (usually 2 bytes), its body
            if batch[pos] != _ARRAY_ELEMENT_TAG:
                return None
            low = batch[pos + 1]
            if low < 0x80:
                body, pos = pos + 2, pos + 2 + low
            elif batch[pos + 2] < 0x80:
                body, pos = pos + 3, pos + 3 + ((low & 0x7F) | batch[pos + 2] << 7)
            else:
                size, body = _varint(batch, pos + 1)
                pos = body + size
            bodies.append(body)
            ends.append(pos)
        if pos != end:
            return None
        inner = _payload_framing(batch, bodies[0], ends[0], leading)
    except IndexError:
        return None
    if inner is None:
        return None
    framing, payloads, size = inner
    if min(map(sub, ends, bodies)) < size:
        return None
    raws = [batch[at:at + size] for at in bodies]
    joined = b"".join(raws)
    if not _alike(joined, size, framing):
        return None
    # only the leading payloads were checked: let protobuf check the rest, so that a
    # batch the element-by-element decoder rejects is rejected here too
    try:
        api_pb2.GadgetDataArray.FromString(batch)
    except ProtobufDecodeError:
        return None
    return BatchSplit(raws, tuple(payloads), joined, bodies, ends)


def raw_layout(layout: DataSourceLayout, payloads: Sequence[Tuple[int, int]]) -> DataSourceLayout:
    """The layout of a record's bytes as sent (``payloads``: (offset, size) of each
    payload in them): every field at its place. Fields whose payload is absent,
    too short or empty are left out (missing)."""
    fields = []
    for f in layout.fields:
        if f.payload_index >= len(payloads):
            continue
        base, size = payloads[f.payload_index]
        if f.size == 0 and size:  # a whole-payload field: its size is the payload's here
            fields.append(FieldSpec(f.name, 0, base, size, f.kind))
        elif f.size and f.offset + f.size <= size:
            fields.append(FieldSpec(f.name, 0, base + f.offset, f.size, f.kind))
    return dataclasses.replace(layout, fields=tuple(fields))


def compile_batch_keys(layout: DataSourceLayout, names: Sequence[str], stride: int
                       ) -> Callable[[Any], Iterable[Tuple[int, ...]]]:
    """A function: records laid end to end -> for each, the integer fields
    ``names`` in that order. ``layout`` is a :func:`raw_layout`, ``stride`` the
    size of one record."""
    specs = {f.name: f for f in layout.fields}
    members = []
    for name in names:
        spec = specs.get(name)
        if spec is None or spec.kind not in _INT_KINDS or spec.size != _SCALARS[spec.kind][1]:
            raise DecodeError(f"datasource {layout.name}: no integer field {name}")
        members.append(spec)
    fmt, cursor = [layout.byte_order], 0
    for spec in sorted(members, key=lambda s: s.offset):
        if spec.offset < cursor:
            raise DecodeError(f"datasource {layout.name}: field {spec.name} overlaps another")
        fmt.append(f"{spec.offset - cursor}x{_SCALARS[spec.kind][0]}")
        cursor = spec.offset + spec.size
    fmt.append(f"{stride - cursor}x")
    unpack = struct.Struct("".join(fmt)).iter_unpack
    by_offset = sorted(range(len(members)), key=lambda i: members[i].offset)
    if by_offset == list(range(len(members))):
        return unpack
    reorder = itemgetter(*[by_offset.index(i) for i in range(len(members))])
    return lambda records: map(reorder, unpack(records))


class _BatchBuilder(NamedTuple):
    keys: Callable[[Any], Iterable[Tuple[int, ...]]]
    decode: Callable[[bytes], Record]


def _batch_builder(layout: DataSourceLayout, schema: RecordSchema, split: BatchSplit) -> _BatchBuilder:
    raw = raw_layout(layout, split.payloads)
    extract = compile_extractor(raw, schema.fields, raw=True)
    make = schema.make
    return _BatchBuilder(compile_batch_keys(raw, schema.batch_keys, len(split.raws[0])),
                         lambda record: make(extract(record)))


_PROCESS_OF_KEY = itemgetter(0, 1)  # batch key -> (pid, process_start)


@dataclass
class DecodeStats:
    events: int = 0
    payloads: int = 0
    records: int = 0
    batched: int = 0  # records that came in a LockEdgeBatch (lazy_edges)
    dropped_by_server: int = 0  # gaps in the payload sequence numbers
    rejected: int = 0  # payloads or elements that did not decode
    ignored: int = 0  # elements of datasources igdeadlock makes no records from
    unknown_datasource: int = 0
    before_info: int = 0


Output = Union[Record, FetchTick, LogMessage, api_pb2.GadgetInfo]


class StreamDecoder:
    """Turns one RunGadget event stream into records, counting what it cannot use.

    Never raises on bad input: every event it cannot use is counted in ``stats``
    (a whole batch that does not parse counts once per batch).
    """

    def __init__(self, schemas: Optional[Mapping[str, RecordSchema]] = None, lazy_edges: bool = False) -> None:
        self.schemas = dict(RECORD_SCHEMAS if schemas is None else schemas)
        self.lazy_edges = lazy_edges  # edges as LockEdgeBatch, decoded when needed
        self.stats = DecodeStats()
        self.info: Optional[api_pb2.GadgetInfo] = None
        self.layouts: Dict[int, DataSourceLayout] = {}
        self.problems: Dict[str, str] = {}  # datasource -> why its records cannot be built
        self._builders: Dict[int, Tuple[Callable, Callable, Optional[Callable]]] = {}
        self._batch_builders: Dict[Tuple[int, int, tuple], Optional[_BatchBuilder]] = {}
        self._processes: set = set()  # (pid, start) already described by a ProcessMeta
        self._last_seq: Optional[int] = None

    def new_stream(self) -> None:
        """A new RunGadget stream follows (a reconnection): sequence numbers and
        the gadget's description start over; the statistics go on."""
        self.info = None
        self.layouts, self._builders, self.problems, self._batch_builders = {}, {}, {}, {}
        self._processes = set()
        self._last_seq = None

    def set_info(self, info: api_pb2.GadgetInfo) -> None:
        self.info = info
        self.layouts, self._builders, self.problems, self._batch_builders = {}, {}, {}, {}
        for ds in info.dataSources:
            try:
                layout = DataSourceLayout.from_proto(ds)
            except (ValueError, TypeError):
                continue
            self.layouts[ds.id] = layout
            schema = self.schemas.get(layout.name)
            if schema is None:
                continue
            try:
                meta = compile_extractor(layout, META_FIELDS, optional=True) if schema.per_process else None
                self._builders[ds.id] = (compile_extractor(layout, schema.fields), schema.make, meta)
            except (DecodeError, KeyError, ValueError, struct.error) as exc:
                self.problems[layout.name] = str(exc)

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
        if self.lazy_edges and layout.type == DATASOURCE_TYPE_ARRAY and event.dataSourceID in self._builders:
            batch = self._lazy_batch(layout, event.payload)
            if batch is not None:
                return batch
        try:
            elements = layout.parse_payload(event.payload)
        except DecodeError:
            self.stats.rejected += 1
            return []
        out: List[Output] = []
        builder = self._builders.get(event.dataSourceID)
        if builder is not None:
            extract, make, meta = builder
            processes = self._processes
            rejected_before = self.stats.rejected
            for element in elements:
                try:
                    record = make(extract(element))
                    if meta is not None and (record[0], record[4]) not in processes:
                        processes.add((record[0], record[4]))
                        out.append(ProcessMeta(record[0], record[4], record[3], *meta(element)))
                    elif type(record) is ProcessExit:
                        processes.discard((record.pid, record.process_start))
                    out.append(record)
                except (DecodeError, IndexError, TypeError, ValueError, struct.error):
                    self.stats.rejected += 1
            self.stats.records += len(elements) - (self.stats.rejected - rejected_before)
        elif layout.name in self.problems:
            self.stats.rejected += len(elements)
        else:
            self.stats.ignored += len(elements)
        if layout.type == DATASOURCE_TYPE_ARRAY:
            out.append(FetchTick(layout.name, len(elements)))
        return out

    def _lazy_batch(self, layout: DataSourceLayout, payload: bytes) -> Optional[List[Output]]:
        """A batch as one LockEdgeBatch, when its records are framed alike; else None."""
        schema = self.schemas[layout.name]
        if not schema.batch_keys:
            return None
        wanted = dict(schema.fields)
        leading = 1 + max((f.payload_index for f in layout.fields if f.name in wanted), default=-1)
        split = split_elements(payload, leading) if leading else None
        if split is None:
            return None
        cache_key = (layout.id, len(split.raws[0]), split.payloads)
        if cache_key not in self._batch_builders:
            try:
                self._batch_builders[cache_key] = _batch_builder(layout, schema, split)
            except (DecodeError, KeyError, ValueError, struct.error):
                self._batch_builders[cache_key] = None  # these elements lack a field: decode one by one
        builder = self._batch_builders[cache_key]
        if builder is None:
            return None
        raws = split.raws
        keys = list(builder.keys(split.joined))
        out: List[Output] = []
        new = set(map(_PROCESS_OF_KEY, keys)).difference(self._processes)
        for index, key in enumerate(keys) if new else ():
            process = (key[0], key[1])
            if process in new:
                new.discard(process)
                self._processes.add(process)
                out.append(self._process_meta(layout.id, builder.decode(raws[index]),
                                              payload[split.bodies[index]:split.ends[index]]))
                if not new:
                    break
        out.append(LockEdgeBatch(keys, raws, builder.decode))  # type: ignore[arg-type]
        out.append(FetchTick(layout.name, len(keys)))
        self.stats.records += len(keys)
        self.stats.batched += len(keys)
        return out

    def _process_meta(self, datasource_id: int, record: Record, element: bytes) -> ProcessMeta:
        """Where the process of ``record`` runs, from its element's enrichment fields."""
        meta = self._builders[datasource_id][2]
        values = meta(api_pb2.DataElement.FromString(element)) if meta is not None else ("",) * len(META_FIELDS)
        return ProcessMeta(record[0], record[4], record[3], *values)  # type: ignore[index]
