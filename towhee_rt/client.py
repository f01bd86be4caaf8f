"""A typed tritonclient wrapper for served towhee_rt pipelines (gRPC or HTTP).

Example::

    from towhee_rt import Client
    with Client('127.0.0.1:8001', model_name='pipeline') as client:
        vectors = client.infer(['a.jpg', 'b.jpg'], mode='async_infer', concurrency=4)

Items become one request each (``batch_size=1``, the default) or ``batch_size`` per request.
Local files are read and sent as bytes; URLs and other strings are sent as UTF-8 strings.
A failed request of several items is retried item by item, so each failure is reported for
its own index and the other items still succeed.
"""
from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import ClientError, ConfigError, ItemError, PipelineError

PROTOCOLS = ("grpc", "http")
MODES = ("infer", "async_infer", "stream")
_OPERATOR_MESSAGE = re.compile(r"operator ([\w.]+): item \d+: (.*)", re.S)


class Client:
    """Query one served pipeline (a Triton model) with lists of items."""

    def __init__(self, url: str = "127.0.0.1:8001", model_name: str = "pipeline",
                 protocol: str = "grpc", timeout: float = 60.0):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.url = url.split("://", 1)[-1]
        self.model_name = model_name
        self.protocol = protocol
        self.timeout = timeout
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
        if errors not in ("raise", "return"):
            raise ConfigError(f"errors must be 'raise' or 'return', got {errors!r}")
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
        try:
            rows = self._send([items[i] for i in batch])
            return list(zip(batch, rows))
        except ItemError as error:
            if len(batch) == 1:
                index = batch[0]
                message = _name_local_file(items[index], error.message)
                return [(index, ItemError(index, error.operator, message))]
        return [pair for i in batch for pair in self._run_batch(items, [i])]

    def _send(self, values: List[Any]) -> List[Any]:
        module = self._module()
        inputs = []
        for spec in self._inputs:
            array = _to_array(values, spec["datatype"])
            tensor = module.InferInput(spec["name"], list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput(name) for name in self._outputs]
        try:
            kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            result = self._client().infer(self.model_name, inputs, outputs=outputs, **kwargs)
        except Exception as exc:  # noqa: BLE001 - becomes a per-item error
            operator, message = _parse_error(exc)
            raise ItemError(-1, operator, message) from None
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
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigError(f"cannot send item of type {type(value).__name__}; expected a path, "
                          "a URL, bytes or a string")
    path = value[len("file://"):] if value.startswith("file://") else value
    if len(path) < 4096 and "\n" not in path and os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    return value.encode("utf-8")


def _name_local_file(item: Any, message: str) -> str:
    """Put the local path back in place of the server's ``<encoded image, N bytes>``."""
    if isinstance(item, (str, os.PathLike)) and message.startswith("<encoded"):
        return f"{os.fspath(item)}{message[message.index('>') + 1:]}"
    return message


def _parse_error(exc: Exception) -> Tuple[Optional[str], str]:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    match = _OPERATOR_MESSAGE.search(text or "")
    if match:
        return match.group(1), match.group(2).strip()
    return None, text or type(exc).__name__


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
