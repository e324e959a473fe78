"""The shape of IG's ``GadgetEvent`` stream: event types and log levels.

Shared by the transport (:mod:`igdeadlock.wire`) and the decoder
(:mod:`igdeadlock.decode`); it imports neither gRPC nor anything about locks.
"""

from __future__ import annotations

from typing import Optional

from igdeadlock.ig.proto import api_pb2

# GadgetEvent.type values (pkg/gadget-service/api/consts.go).
EVENT_PAYLOAD = 0
EVENT_GADGET_INFO = 4
EVENT_LOG_SHIFT = 16  # log events: type = logrus level << 16

LOG_LEVEL_NAMES = ("panic", "fatal", "error", "warning", "info", "debug", "trace")
LOG_LEVEL_WARNING = 3


def log_level_of(event_type: int) -> Optional[int]:
    """The logrus level of a log event, or None if the event is not a log."""
    if event_type >= 1 << EVENT_LOG_SHIFT:
        return event_type >> EVENT_LOG_SHIFT
    return None


def parse_gadget_info(payload: bytes) -> api_pb2.GadgetInfo:
    info = api_pb2.GadgetInfo()
    info.ParseFromString(payload)
    return info
