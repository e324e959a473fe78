"""Transport to Inspektor Gadget's gadget service (``ig daemon`` or a gadget pod).

This layer knows gRPC and IG's service, not deadlocks: it opens channels,
asks for server and gadget information and runs a gadget as a stream of raw
``api.GadgetEvent`` messages. Decoding them is :mod:`igdeadlock.decode`'s job.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator, List, Mapping, Optional, Tuple

import grpc

from igdeadlock.ig.events import LOG_LEVEL_WARNING
from igdeadlock.ig.proto import api_pb2, api_pb2_grpc

DEFAULT_DAEMON_ADDRESS = "unix:///var/run/ig/ig.socket"

# Protocol versions the service accepts (pkg/gadget-service/api/consts.go).
API_VERSION = "1.0"  # InfoResponse.version of the gadget service igdeadlock speaks
GADGET_INFO_VERSION = 1
RUN_PROTOCOL_VERSION = 1

# Map-iterator batches can be large; the server sends them as one message.
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
)


class WireError(Exception):
    """The gadget service could not be reached or refused a request."""


@dataclass(frozen=True)
class TlsConfig:
    """Client-side TLS settings; a client certificate enables mutual TLS."""

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    server_name: Optional[str] = None


@dataclass(frozen=True)
class Address:
    """A parsed gadget-service address: ``unix:///path`` or ``tcp://host:port``."""

    scheme: str
    location: str  # socket path or host:port

    @property
    def grpc_target(self) -> str:
        if self.scheme == "unix":
            return "unix://" + self.location
        return self.location

    def __str__(self) -> str:
        if self.scheme == "unix":
            return "unix://" + self.location
        return "tcp://" + self.location


def parse_address(text: str) -> Address:
    """Parse a daemon address; bare paths are unix sockets, bare host:port is tcp."""
    text = text.strip()
    if text.startswith("unix://"):
        path = text[len("unix://"):]
        if not path.startswith("/"):
            raise ValueError(f"unix socket address needs an absolute path: {text!r}")
        return Address("unix", path)
    if text.startswith("tcp://"):
        hostport = text[len("tcp://"):]
    elif text.startswith("/"):
        return Address("unix", text)
    elif "://" in text:
        raise ValueError(f"unsupported address scheme in {text!r} (use unix:// or tcp://)")
    else:
        hostport = text
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected tcp://HOST:PORT, got {text!r}")
    return Address("tcp", hostport)


def _read(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def open_channel(address: Address, tls: Optional[TlsConfig] = None) -> grpc.Channel:
    """Open a channel; plaintext unless TLS settings are given."""
    options: List[Tuple[str, object]] = list(_CHANNEL_OPTIONS)
    if tls is None:
        return grpc.insecure_channel(address.grpc_target, options=options)
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ValueError("mutual TLS needs both a client certificate and its key")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(address.grpc_target, credentials, options=options)


def describe_rpc_error(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {details}"


@dataclass(frozen=True)
class ServerInfo:
    version: str
    server_version: str
    experimental: bool


class GadgetService:
    """A connection to one gadget service."""

    def __init__(self, address: Address, tls: Optional[TlsConfig] = None) -> None:
        self.address = address
        self._channel = open_channel(address, tls)
        self._builtin = api_pb2_grpc.BuiltInGadgetManagerStub(self._channel)
        self._gadgets = api_pb2_grpc.GadgetManagerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "GadgetService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def server_info(self, timeout: float = 5.0) -> ServerInfo:
        """Ask the server who it is; also the health check (waits up to timeout).

        Raises WireError when nobody answers, when the socket may not be used,
        or when the server speaks another version of the gadget API."""
        if self.address.scheme == "unix":
            self._check_socket(self.address.location)
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=timeout)
            reply = self._builtin.GetInfo(api_pb2.InfoRequest(version=API_VERSION), timeout=timeout)
        except grpc.FutureTimeoutError as exc:
            raise WireError(f"no gadget service answers at {self.address} within {timeout:g}s") from exc
        except grpc.RpcError as exc:
            raise WireError(f"gadget service at {self.address}: {describe_rpc_error(exc)}") from exc
        finally:
            # a future left waiting keeps polling the channel from a thread of
            # its own, which raises once the channel is closed
            ready.cancel()
        if reply.version != API_VERSION:
            raise WireError(f"the gadget service at {self.address} speaks API version {reply.version!r} "
                            f"(ig {reply.serverVersion or 'unknown'}); igdeadlock speaks {API_VERSION!r}: "
                            "use an ig release with the same gadget API")
        return ServerInfo(reply.version, reply.serverVersion, reply.experimental)

    def _check_socket(self, path: str) -> None:
        denied = WireError(f"permission denied on {path}: run igdeadlock as root, or as a member of the "
                           "group the daemon gives its socket (ig daemon --group)")
        try:
            os.stat(path)
        except FileNotFoundError:
            raise WireError(f"no gadget service at {self.address}: the socket does not exist "
                            "(start `ig daemon`, or leave --remote out to let igdeadlock start one)") from None
        except PermissionError:
            raise denied from None
        if not os.access(path, os.R_OK | os.W_OK):
            raise denied

    def gadget_info(
        self,
        image: str,
        params: Optional[Mapping[str, str]] = None,
        extra_info: bool = False,
        timeout: float = 60.0,
    ) -> api_pb2.GadgetInfo:
        request = api_pb2.GetGadgetInfoRequest(
            imageName=image,
            paramValues=dict(params or {}),
            version=GADGET_INFO_VERSION,
            requestExtraInfo=extra_info,
        )
        try:
            return self._gadgets.GetGadgetInfo(request, timeout=timeout).gadgetInfo
        except grpc.RpcError as exc:
            raise WireError(f"gadget info for {image}: {describe_rpc_error(exc)}") from exc

    def run_gadget(
        self,
        image: str,
        params: Optional[Mapping[str, str]] = None,
        timeout_ns: int = 0,
        log_level: int = LOG_LEVEL_WARNING,
    ) -> "GadgetRun":
        run = api_pb2.GadgetRunRequest(
            imageName=image,
            paramValues=dict(params or {}),
            version=RUN_PROTOCOL_VERSION,
            logLevel=log_level,
            timeout=timeout_ns,
        )
        return GadgetRun(self._gadgets, run)


_STOP = object()


@dataclass
class GadgetRun:
    """One RunGadget call: iterate it for events, ``stop()`` it from any thread."""

    _stub: api_pb2_grpc.GadgetManagerStub
    _run: api_pb2.GadgetRunRequest
    _requests: "queue.Queue[object]" = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: bool = False
    _call: Optional[grpc.Call] = None

    def _request_stream(self) -> Iterator[api_pb2.GadgetControlRequest]:
        yield api_pb2.GadgetControlRequest(runRequest=self._run)
        while True:
            item = self._requests.get()
            if item is _STOP:
                yield api_pb2.GadgetControlRequest(stopRequest=api_pb2.GadgetStopRequest())
                return

    def events(self) -> Iterator[api_pb2.GadgetEvent]:
        """Events until the gadget ends; raises WireError if the stream breaks."""
        with self._lock:
            self._call = self._stub.RunGadget(self._request_stream())
        try:
            for event in self._call:
                yield event
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and self._stopped:
                return
            raise WireError(f"gadget stream: {describe_rpc_error(exc)}") from exc

    def stop(self) -> None:
        """Ask the server to stop the gadget; the event stream then ends."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._requests.put(_STOP)

    def cancel(self) -> None:
        """Drop the stream at once (the server stops the gadget too)."""
        with self._lock:
            self._stopped = True
            call = self._call
        self._requests.put(_STOP)
        if call is not None:
            call.cancel()
