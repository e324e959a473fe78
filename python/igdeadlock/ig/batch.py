"""A map-iterator fetch as one batch: IG sends each fetch as one serialized
GadgetDataArray; when its elements are framed alike, they are split without a
protobuf parse of every element (see the comment below).
"""

from __future__ import annotations

from itertools import chain
from operator import sub
from typing import Any, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from google.protobuf.message import DecodeError as ProtobufDecodeError

from igdeadlock.ig.proto import api_pb2

# # A map-iterator fetch arrives as one serialized GadgetDataArray. A record is
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
    elements: int
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
