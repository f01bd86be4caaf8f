"""A typed tritonclient wrapper for served towhee_rt pipelines (gRPC or HTTP).

Example::

    from towhee_rt import Client
    with Client('127.0.0.1:8001', model_name='pipeline') as client:
        vectors = client.infer(['a.jpg', 'b.jpg'], mode='async_infer', concurrency=4)

Items become one request each (``batch_size=1``, the default) or ``batch_size`` per request.
Local files are read and sent as bytes; URLs and other strings are sent as UTF-8 strings.
A request whose items failed carries one structured failure per item (see
``towhee_rt.backends._operator.ItemFailure``): each such item becomes an :class:`ItemError` of
the matching kind, named by the caller's index (and local file name), and the other items of
that request are sent again without them.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .backends._operator import ItemFailure, decode_failures
from .errors import ClientError, ConfigError, ItemError, PipelineError, check_error_mode

PROTOCOLS = ("grpc", "http")
MODES = ("infer", "async_infer", "stream")


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """What ``Client(on_request=...)`` is told after each request it sent."""

    #: Items in the request.
    items: int
    #: Wall time of the request, from sending to the answer.
    seconds: float
    #: The failure, or ``None`` when every item succeeded.
    error: Optional[BaseException] = None


class _RequestFailed(Exception):
    """A request failed: its items' structured failures, or the server's or transport's text."""

    def __init__(self, failures: List[ItemFailure], text: str):
        super().__init__(text)
        self.failures = failures
        self.text = text


class Client:
    """Query one served pipeline (a Triton model) with lists of items.

    ``on_request(record)`` is called after every request this client sends (in the thread that
    sent it) with a :class:`RequestRecord`: for latency statistics, logging or metrics.
    """

    def __init__(self, url: str = "127.0.0.1:8001", model_name: str = "pipeline",
                 protocol: str = "grpc", timeout: float = 60.0,
                 on_request: Optional[Callable[[RequestRecord], None]] = None):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.url = url.split("://", 1)[-1]
        self.model_name = model_name
        self.protocol = protocol
        self.timeout = timeout
        self.on_request = on_request
        self._local = threading.local()
        self._clients: List[Any] = []
        self._lock = threading.Lock()
        self._inputs, self._outputs = self._read_metadata()

    # -- public API ---------------------------------------------------------------------------
    def infer(self, items: Sequence[Any], mode: str = "infer", batch_size: int = 1,
              concurrency: int = 4, errors: str = "raise") -> List[Any]:
        """Results for ``items`` in input order (``mode``: ``infer`` or ``async_infer``)."""
        if mode not in ("infer", "async_infer"):
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r} (use .stream() for "
                              "'stream')")
        check_error_mode(errors)
        results: List[Any] = [None] * len(items)
        workers = 1 if mode == "infer" else concurrency
        for index, result in self.stream(items, batch_size=batch_size, concurrency=workers):
            results[index] = result
        failed = [r for r in results if isinstance(r, ItemError)]
        if failed and errors == "raise":
            raise PipelineError(failed, results)
        return results

    def stream(self, items: Sequence[Any], batch_size: int = 1, concurrency: int = 4,
               close: bool = False) -> Iterator[Tuple[int, Any]]:
        """Yield ``(index, result or ItemError)`` as results arrive, ``concurrency`` in flight."""
        _check_positive(batch_size, "batch_size")
        _check_positive(concurrency, "concurrency")
        batches = [list(range(k, min(k + batch_size, len(items))))
                   for k in range(0, len(items), batch_size)]
        try:
            if concurrency == 1:
                for batch in batches:
                    yield from self._run_batch(items, batch)
                return
            with ThreadPoolExecutor(concurrency, thread_name_prefix="towhee_rt-client") as pool:
                futures = [pool.submit(self._run_batch, items, batch) for batch in batches]
                for future in as_completed(futures):
                    yield from future.result()
        finally:
            if close:
                self.close()

    def ready(self) -> bool:
        """Whether the server and this pipeline's model are ready."""
        client = self._client()
        return bool(client.is_server_ready() and client.is_model_ready(self.model_name))

    def close(self) -> None:
        """Close every connection this client opened."""
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
        self._local = threading.local()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------
    def _module(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _client(self):
        """One tritonclient per thread (the HTTP client is not thread-safe)."""
        client = getattr(self._local, "client", None)
        if client is None:
            module = self._module()
            kwargs = {} if self.protocol == "grpc" else {
                "connection_timeout": self.timeout, "network_timeout": self.timeout}
            client = module.InferenceServerClient(self.url, **kwargs)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _read_metadata(self) -> Tuple[List[Dict[str, Any]], List[str]]:
        client = self._client()
        try:
            if self.protocol == "grpc":
                meta = client.get_model_metadata(self.model_name, as_json=True)
            else:
                meta = client.get_model_metadata(self.model_name)
        except Exception as exc:  # noqa: BLE001 - re-raised with what to do
            raise ClientError(f"cannot read model {self.model_name!r} from the Triton server at "
                              f"{self.url} over {self.protocol}: {exc}. Is the server running "
                              "(python -m towhee_rt.serve REPO) and is the url the "
                              f"{self.protocol} port?") from None
        return list(meta["inputs"]), [o["name"] for o in meta["outputs"]]

    def _run_batch(self, items: Sequence[Any], batch: List[int]) -> List[Tuple[int, Any]]:
        """Send ``batch`` (indices into ``items``); each index with its result or ItemError."""
        try:
            rows = self._send([items[i] for i in batch])
            return list(zip(batch, rows))
        except _RequestFailed as failed:
            by_position = {f.index: f for f in failed.failures if 0 <= f.index < len(batch)}
            if not by_position:  # no item named: transport, or a request-level error
                if len(batch) == 1:
                    return [(batch[0], ItemError(batch[0], None, failed.text))]
                return [pair for i in batch for pair in self._run_batch(items, [i])]
        out = [(batch[k], ItemError.from_failure(f, batch[k], _local_file(items[batch[k]])))
               for k, f in by_position.items()]
        rest = [i for k, i in enumerate(batch) if k not in by_position]
        return out + (self._run_batch(items, rest) if rest else [])

    def _send(self, values: List[Any]) -> List[Any]:
        module = self._module()
        inputs = []
        for spec in self._inputs:
            array = _to_array(values, spec["datatype"])
            tensor = module.InferInput(spec["name"], list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput(name) for name in self._outputs]
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        start, error = time.perf_counter(), None
        try:
            result = self._client().infer(self.model_name, inputs, outputs=outputs, **kwargs)
        except Exception as exc:  # noqa: BLE001 - becomes per-item errors
            text = _error_text(exc)
            error = _RequestFailed(decode_failures(text), text)
            raise error from None
        finally:
            if self.on_request is not None:
                self.on_request(RequestRecord(len(values), time.perf_counter() - start, error))
        arrays = {name: result.as_numpy(name) for name in self._outputs}
        if len(arrays) == 1:
            return list(next(iter(arrays.values())))
        return [{name: a[i] for name, a in arrays.items()} for i in range(len(values))]


def _to_array(values: List[Any], datatype: str) -> np.ndarray:
    if datatype != "BYTES":
        return np.stack([np.asarray(v) for v in values])
    array = np.empty((len(values), 1), dtype=np.object_)
    for i, value in enumerate(values):
        array[i, 0] = encode_item(value)
    return array


def encode_item(value: Any) -> bytes:
    """What is sent for one item: a local file's bytes, or the value itself as bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    path = _local_file(value)
    if path is not None:
        with open(path, "rb") as f:
            return f.read()
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigError(f"cannot send item of type {type(value).__name__}; expected a path, "
                          "a URL, bytes or a string")
    return value.encode("utf-8")


def _local_file(value: Any) -> Optional[str]:
    """The local file ``value`` names (a path or ``file://`` URL), or ``None``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        return None
    path = value[len("file://"):] if value.startswith("file://") else value
    if len(path) < 4096 and "\n" not in path and os.path.isfile(path):
        return path
    return None


def _error_text(exc: Exception) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return text or type(exc).__name__


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
