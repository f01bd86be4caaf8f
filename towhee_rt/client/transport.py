"""The client's tritonclient calls: connections per thread and endpoint, one inference request,
reading a model's metadata and config, readiness.

Every call names its endpoint (``url``) explicitly. tritonclient is imported here only, when
the first connection opens (``import towhee_rt`` does not load it).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Mapping, Tuple

from ..backends.wire import SHAPES_SUFFIX, crop_items
from .inputs import to_array
from .model import ServedModel

__all__ = ["ConnectionPool", "Transport", "connection_options"]


class ConnectionPool:
    """One connection per thread and endpoint (the HTTP client is not thread-safe), keyed by
    the thread itself (a thread id may be reused by a later thread); ``open(url)`` makes one.
    Thread-safe."""

    def __init__(self, open: Callable[[str], Any]):  # noqa: A002 - what it does
        self._open = open
        self._connections: Dict[Tuple[threading.Thread, str], Any] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._connections)

    def get(self, url: str) -> Any:
        """This thread's connection to ``url``, opened on first use."""
        key = (threading.current_thread(), url)
        connection = self._connections.get(key)
        if connection is None:
            connection = self._open(url)
            with self._lock:
                self._connections[key] = connection
        return connection

    def drop(self, url: str) -> None:
        """Close this thread's connection to ``url``, so that the next call opens a fresh one
        (a server restarted on the same address is then reached at once)."""
        with self._lock:
            connection = self._connections.pop((threading.current_thread(), url), None)
        _close_quietly([connection] if connection is not None else [])

    def close_finished_threads(self) -> None:
        """Close the connections of threads that have ended (each call's worker threads), so a
        long-lived client does not gather one connection per worker of every call."""
        with self._lock:
            ended = [key for key in self._connections if not key[0].is_alive()]
            connections = [self._connections.pop(key) for key in ended]
        _close_quietly(connections)

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        _close_quietly(connections)


class Transport:
    """tritonclient calls for model ``model_name`` over ``protocol`` (``'grpc'`` or
    ``'http'``), each sending ``headers``; connections wait at most ``timeout`` seconds."""

    def __init__(self, protocol: str, model_name: str, headers: Mapping[str, str],
                 timeout: float):
        self.protocol, self.model_name, self.headers = protocol, model_name, dict(headers)
        self.connections = ConnectionPool(self._open)
        self._timeout = timeout

    def read_model(self, url: str, remaining: float) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The model's metadata and config (JSON, field names as in config.pbtxt) at ``url``;
        raises tritonclient's error."""
        connection = self.connections.get(url)
        if self.protocol == "grpc":
            meta = connection.get_model_metadata(self.model_name, headers=self.headers,
                                                 as_json=True, client_timeout=remaining)
            config = connection.get_model_config(self.model_name, headers=self.headers,
                                                 as_json=True, client_timeout=remaining)
            return meta, config["config"]
        return (connection.get_model_metadata(self.model_name, headers=self.headers),
                connection.get_model_config(self.model_name, headers=self.headers))

    def infer(self, url: str, model: ServedModel, values: List[Any], remaining: float) -> List[Any]:
        """One request of ``values`` (one per item) to ``url``: each item's result. The server
        drops it at any step that would start it after ``remaining`` seconds (the client stops
        waiting then too). Raises tritonclient's error."""
        module = self._module()
        inputs = []
        for spec in model.inputs:
            array = to_array(values, spec["datatype"])
            tensor = module.InferInput(spec["name"], list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput(name) for name in model.outputs]
        # Triton's per-request timeout, in microseconds (0 would mean none): the request's
        # budget. The served pipeline's first step counts it from when it takes the request and
        # hands the deadline on, so no later step computes it once this client has given up
        # (backends/deadlines.py); client and server clocks are never compared.
        options: Dict[str, Any] = {"timeout": max(1, int(remaining * 1e6))}
        if self.protocol == "grpc":
            options["client_timeout"] = max(remaining, 1e-3)
        result = self.connections.get(url).infer(self.model_name, inputs, outputs=outputs,
                                                  headers=self.headers, **options)
        return _rows(result, model.outputs, len(values))

    def ready(self, url: str) -> bool:
        """Whether the server at ``url`` and the model are ready; raises tritonclient's error
        when the server cannot be reached."""
        connection = self.connections.get(url)
        return bool(connection.is_server_ready(headers=self.headers)
                    and connection.is_model_ready(self.model_name, headers=self.headers))

    def _module(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _open(self, url: str) -> Any:
        return self._module().InferenceServerClient(
            url, **connection_options(self.protocol, self._timeout))


def _rows(result: Any, outputs: Tuple[str, ...], count: int) -> List[Any]:
    """Each item's result in an answer: its one output, or a dict of its outputs."""
    arrays = {name: result.as_numpy(name) for name in outputs}
    for name in [n for n in arrays if n + SHAPES_SUFFIX in arrays]:
        # Items of different shapes arrive zero-padded, with their shapes beside them.
        arrays[name] = crop_items(arrays[name], arrays.pop(name + SHAPES_SUFFIX))
    if len(arrays) == 1:
        return list(next(iter(arrays.values())))
    return [{name: a[i] for name, a in arrays.items()} for i in range(count)]


def connection_options(protocol: str, timeout: float) -> Dict[str, Any]:
    """Keyword arguments of a tritonclient ``InferenceServerClient`` for ``protocol``, so that a
    server restarted on the same address (or a replica back up) is reached at once."""
    if protocol == "http":
        return {"connection_timeout": timeout, "network_timeout": timeout}
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    # tritonclient's own channel options, plus a channel-local subchannel pool: gRPC
    # otherwise shares one connection (and its reconnect backoff, up to minutes) among
    # every channel to the same address, so a fresh channel would not reconnect at once
    # to a restarted server.
    return {"channel_args": [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1)]}


def _close_quietly(connections: List[Any]) -> None:
    """Close connections; a broken one may fail to close, and it is gone anyway."""
    for connection in connections:
        try:
            connection.close()
        except Exception:  # noqa: BLE001
            pass
