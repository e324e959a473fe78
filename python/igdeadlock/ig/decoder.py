"""One RunGadget event stream -> the gadget's records.

The datasource layouts come from the stream's GadgetInfo; each record type of
igdeadlock's gadget (records.py) declares the fields it needs, by name and
category, and is built from them. Map-iterator fetches of edges can be kept as
batches, decoded only as far as ingest needs.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from google.protobuf.message import DecodeError as ProtobufDecodeError

from igdeadlock.gadget import COUNTER_NAMES
from igdeadlock.ig.batch import BatchSplit, split_elements
from igdeadlock.ig.datasource import (
    DATASOURCE_TYPE_ARRAY,
    INT,
    INTS,
    TEXT,
    DataSourceLayout,
    DecodeError,
    compile_batch_keys,
    compile_extractor,
    raw_layout,
)
from igdeadlock.ig.events import EVENT_GADGET_INFO, EVENT_PAYLOAD, log_level_of, parse_gadget_info
from igdeadlock.ig.proto import api_pb2
from igdeadlock.records import (
    EDGE_KEY_FIELDS,
    BlockedThread,
    Counter,
    FetchTick,
    LockEdge,
    LockEdgeBatch,
    LogMessage,
    MappedFile,
    MisuseEvent,
    ProcessEvent,
    ProcessExit,
    ProcessMeta,
    PythonCode,
    Record,
    StackTrace,
    ThreadResumed,
    UntracedWait,
    WaitingThread,
)


@dataclass(frozen=True)
class RecordSchema:
    """The fields a record type is built from, in order, and how to build it.

    ``per_process``: the record starts with pid, tid, comm, mntns_id and
    process_start; the decoder also sends a ProcessMeta the first time it sees
    a process in it."""

    fields: Tuple[Tuple[str, str], ...]  # (field name, category)
    make: Callable[[Tuple[Any, ...]], Record]
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


# A kernel address read as a signed 64-bit field is negative: its bits are the address.
ADDRESS_MASK = (1 << 64) - 1

# Frame-pointer unwinding through code built without frame pointers ends in
# junk (0, or a small number): the stack ends at the first such frame.
MIN_CODE_ADDRESS = 4096

# Seconds a process's records are looked at for its container, after a first
# one without: IG's container collection learns of a new container by polling.
PLACEMENT_WAIT = 30.0


def _stack(site: int, pid: int, count: int, files: Sequence[int], offsets: Sequence[int],
           addresses: Sequence[int], python_count: int = 0, python_code: Sequence[int] = (),
           python_instr: Sequence[int] = ()) -> StackTrace:
    frames = []
    for file_id, offset, address in zip(files[:count], offsets[:count], addresses[:count]):
        if address < MIN_CODE_ADDRESS:
            break
        frames.append((file_id, offset, address))
    python = tuple(zip(python_code[:python_count], python_instr[:python_count]))
    return StackTrace(site, pid, tuple((f, o) for f, o, _ in frames), tuple(a for _, _, a in frames), python)


_HELD_FIELDS = (("held_count", INT), ("held_locks", INTS), ("held_gens", INTS), ("held_modes", INTS))


def _with_held(record: Any, **options: Any) -> RecordSchema:
    """The schema of a per-process record whose last field is the held-lock set:
    its other fields by name, in order, then the four held_* fields."""
    names = record._fields[:-1]
    count = len(names)
    return RecordSchema(
        tuple((name, TEXT if name == "comm" else INT) for name in names) + _HELD_FIELDS,
        lambda v: record._make((*v[:count], _held(*v[count:]))),
        per_process=True,
        **options,
    )


def _blocked_schema() -> RecordSchema:
    """Blocked threads: the fields before the held-lock set, the set, then how
    many threads the process had and the wait's own stack."""
    names = BlockedThread._fields[:BlockedThread._fields.index("held")]
    count = len(names)

    def make(v: Sequence[Any]) -> BlockedThread:
        threads, frame_count, frames = v[count + 4:]
        kept = []
        for address in frames[:frame_count]:
            if address < MIN_CODE_ADDRESS:
                break  # unwinding junk: the stack ends here
            kept.append(address)
        return BlockedThread._make((*v[:count], _held(*v[count:count + 4]), threads, tuple(kept), 0))

    return RecordSchema(
        tuple((name, TEXT if name == "comm" else INT) for name in names) + _HELD_FIELDS +
        (("process_threads", INT), ("wait_frame_count", INT), ("wait_frames", INTS)),
        make, per_process=True)


def _waiting_schema() -> RecordSchema:
    """Snapshot records: every field by name, the kernel stack cut at its length."""
    names = WaitingThread._fields[:-2]
    count = len(names)
    return RecordSchema(
        tuple((name, TEXT if name == "comm" else INT) for name in names) +
        (("user_saved", INTS), ("kernel_frame_count", INT), ("kernel_frames", INTS)),
        lambda v: WaitingThread._make((*v[:count], tuple(a & ADDRESS_MASK for a in v[count]),
                                       tuple(a & ADDRESS_MASK for a in v[count + 2][:v[count + 1]]))),
        per_process=True)


RECORD_SCHEMAS: Dict[str, RecordSchema] = {
    "edges": _with_held(LockEdge, batch_keys=EDGE_KEY_FIELDS),
    "blocked": _blocked_schema(),
    "waiting": _waiting_schema(),
    "misuse": RecordSchema(
        tuple((name, TEXT if name == "comm" else INT) for name in MisuseEvent._fields), MisuseEvent._make,
        per_process=True),
    "resumed": RecordSchema(tuple((name, INT) for name in ThreadResumed._fields), ThreadResumed._make),
    "processes": RecordSchema(
        tuple((name, TEXT if name in ("comm", "exe") else INT) for name in ProcessEvent._fields), ProcessEvent._make),
    "dead_pids": RecordSchema(
        (("pid", INT), ("process_start", INT), ("mntns_id", INT), ("comm", TEXT), ("exited", INT)),
        ProcessExit._make),
    "stacks": RecordSchema(
        (("site", INT), ("stack_pid", INT), ("frame_count", INT), ("frame_files", INTS), ("frame_offsets", INTS),
         ("frame_addresses", INTS), ("python.python_frame_count", INT), ("python.python_code", INTS),
         ("python.python_instr", INTS)),
        lambda v: _stack(*v),
    ),
    "untraced_waits": RecordSchema(
        (("pid", INT), ("comm", TEXT), ("mntns_id", INT), ("process_start", INT), ("site", INT), ("count", INT),
         ("caller", INT), ("caller_file", INT), ("caller_offset", INT)),
        UntracedWait._make),
    "python_codes": RecordSchema(
        (("pid", INT), ("code", INT), ("first_line", INT), ("filename", TEXT), ("qualname", TEXT),
         ("linetable_size", INT), ("linetable", INTS)),
        lambda v: PythonCode(v[0], v[1], v[2], v[3], v[4], bytes(v[6][:v[5]]))),
    "files": RecordSchema(
        (("file_id", INT), ("inode", INT), ("device", INT), ("path", TEXT)), MappedFile._make),
    "counters": RecordSchema(
        (("counter", INT), ("pid", INT), ("count", INT)),
        lambda v: Counter(COUNTER_NAMES.get(v[0], f"counter_{v[0]}"), v[1], v[2]),
    ),
}


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

    def __init__(self, schemas: Optional[Mapping[str, RecordSchema]] = None, lazy_edges: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.schemas = dict(RECORD_SCHEMAS if schemas is None else schemas)
        self.lazy_edges = lazy_edges  # edges as LockEdgeBatch, decoded when needed
        self.stats = DecodeStats()
        self.info: Optional[api_pb2.GadgetInfo] = None
        self.layouts: Dict[int, DataSourceLayout] = {}
        self.problems: Dict[str, str] = {}  # datasource -> why its records cannot be built
        self._builders: Dict[int, Tuple[Callable, Callable, Optional[Callable]]] = {}
        self._batch_builders: Dict[Tuple[int, int, tuple], Optional[_BatchBuilder]] = {}
        self._processes: set = set()  # (pid, start) whose ProcessMeta is final
        # (pid, start) -> until when (clock) a ProcessMeta without a container is looked at again:
        # IG learns of a new container a moment after its first records
        self._unplaced: Dict[Tuple[int, int], float] = {}
        self._clock = clock
        self._last_seq: Optional[int] = None

    def counts(self) -> Dict[str, int]:
        """What the report's statistics take from the decoder: what it lost, and
        how many edge records took the fast (batch) path."""
        return {
            "server_dropped": self.stats.dropped_by_server,
            "decoder_rejected": self.stats.rejected,
            "unknown_datasource": self.stats.unknown_datasource,
            "before_gadget_info": self.stats.before_info,
            "edge_records_batched": self.stats.batched,
        }

    def new_stream(self) -> None:
        """A new RunGadget stream follows (a reconnection): sequence numbers and
        the gadget's description start over; the statistics go on."""
        self.info = None
        self.layouts, self._builders, self.problems, self._batch_builders = {}, {}, {}, {}
        self._processes = set()
        self._unplaced = {}
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
            looked_at: set = set()  # a process without its container is looked at once per payload
            rejected_before = self.stats.rejected
            for element in elements:
                try:
                    record = make(extract(element))
                    if meta is not None and (record[0], record[4]) not in processes:
                        process = (record[0], record[4])
                        if process not in looked_at:
                            looked_at.add(process)
                            placed = self._placed(ProcessMeta(record[0], record[4], record[3], *meta(element)))
                            if placed is not None:
                                out.append(placed)
                    elif type(record) is ProcessExit:
                        processes.discard((record.pid, record.process_start))
                        self._unplaced.pop((record.pid, record.process_start), None)
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

    def raw_records(self, datasource: str, data: bytes) -> List[Record]:
        """The records of structs the gadget wrote elsewhere than to IG (an
        iterator this client ran itself): ``data`` is the structs laid end to
        end, each as the datasource's first payload describes it. Records that
        do not decode are counted as rejected."""
        layout = next((lay for lay in self.layouts.values() if lay.name == datasource), None)
        schema = self.schemas.get(datasource)
        if layout is None or schema is None:
            raise DecodeError(f"the gadget has no datasource {datasource} this client can read")
        ends = [f.offset + f.size for f in layout.fields if f.payload_index == 0 and f.size]
        if not ends:
            raise DecodeError(f"datasource {datasource}: no fixed-size fields")
        size = -(-max(ends) // 8) * 8  # a struct of 64-bit members ends on a multiple of 8
        extract = compile_extractor(raw_layout(layout, ((0, size),)), schema.fields, raw=True)
        records: List[Record] = []
        for offset in range(0, len(data) - len(data) % size, size):
            try:
                records.append(schema.make(extract(data[offset:offset + size])))
            except (DecodeError, IndexError, TypeError, ValueError, struct.error):
                self.stats.rejected += 1
        self.stats.rejected += 1 if len(data) % size else 0
        return records

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
                placed = self._placed(self._process_meta(layout.id, builder.decode(raws[index]),
                                                         payload[split.bodies[index]:split.ends[index]]))
                if placed is not None:
                    out.append(placed)
                if not new:
                    break
        out.append(LockEdgeBatch(keys, raws, builder.decode))  # type: ignore[arg-type]
        out.append(FetchTick(layout.name, len(keys)))
        self.stats.records += len(keys)
        self.stats.batched += len(keys)
        return out

    def _placed(self, meta: ProcessMeta) -> Optional[ProcessMeta]:
        """The ProcessMeta to send for a process not final yet, or None. The first
        one always; later ones only once they name a container (then it is final).
        Without one for PLACEMENT_WAIT seconds, the process runs on the host."""
        process = (meta.pid, meta.process_start)
        in_container = bool(meta.container or meta.runtime_container or meta.container_id or meta.pod)
        until = self._unplaced.get(process)
        if in_container or (until is not None and self._clock() >= until):
            self._processes.add(process)
            self._unplaced.pop(process, None)
            return meta if in_container else None
        if until is None:
            self._unplaced[process] = self._clock() + PLACEMENT_WAIT
            return meta
        return None

    def _process_meta(self, datasource_id: int, record: Record, element: bytes) -> ProcessMeta:
        """Where the process of ``record`` runs, from its element's enrichment fields."""
        meta = self._builders[datasource_id][2]
        values = meta(api_pb2.DataElement.FromString(element)) if meta is not None else ("",) * len(META_FIELDS)
        return ProcessMeta(record[0], record[4], record[3], *values)  # type: ignore[index, arg-type, misc]
