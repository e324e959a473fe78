"""IG's datasource descriptions -> values.

IG describes every datasource in ``GadgetInfo``: each field has a kind, a
payload index, an offset and a size. Payloads are decoded from those
descriptors only (nothing here knows a gadget): a change to a struct in a
gadget needs no change here. compile_extractor() makes, per layout, one
function that unpacks exactly the fields a caller asks for.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from google.protobuf.message import DecodeError as ProtobufDecodeError

from igdeadlock.ig.proto import api_pb2

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

INT, TEXT, INTS = "int", "text", "ints"  # field categories a record can ask for
_INT_KINDS = frozenset(range(1, 10))  # bool and the integer kinds
_TEXT_KINDS = frozenset((KIND_STRING, KIND_CSTRING))


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _view(raw: bytes, code: Any) -> memoryview:
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
