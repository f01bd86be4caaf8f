"""A typed tritonclient wrapper for served towhee_rt pipelines (gRPC or HTTP).

Example::

    from towhee_rt import Client
    with Client('127.0.0.1:8001', model_name='pipeline') as client:
        vectors = client.infer(['a.jpg', 'b.jpg'], mode='async_infer', concurrency=4)

Items become one request each (``batch_size=1``, the default) or ``batch_size`` per request,
split further so that no request is over the server's ``max_request_bytes``.

What is sent for an item follows the served pipeline's input kind (``towhee_input_kind`` in the
ensemble's config): a *text* pipeline gets strings as they are (``'note.txt'`` is the text
"note.txt", as locally); an *image* pipeline gets bytes: local files are read and ``http(s)://``
URLs are downloaded here (:func:`towhee_rt.backends._fetch.fetch_url`), since the server does
not fetch them. An item over the server's ``max_item_bytes``, or a download that fails, becomes
that item's error without being sent. Repositories built before the input kind was recorded get
the older behaviour: local files as bytes, every other string as it is.

``api_key`` is sent on every call (HTTP header ``towhee-api-key``, gRPC metadata
``triton-grpc-protocol-towhee-api-key``), with any ``headers`` given. A server that wants a key
it did not get answers with a :class:`ClientError` saying how to pass it.

A request whose items failed carries one structured failure per item (see
``towhee_rt.backends._operator.ItemFailure``): each such item becomes an :class:`ItemError` of
the matching kind, named by the caller's index (and local file name or URL), and the other items
of that request are sent again without them.
"""
from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .backends._fetch import fetch_url
from .backends._operator import (ItemFailure, OperatorInputError, OperatorLimitError,
                                 decode_failures)
from .errors import ClientError, ConfigError, ItemError, PipelineError, check_error_mode
from .op_config import DEFAULT_MAX_ITEM_BYTES
from .triton.flags import API_KEY_HEADER, GRPC_HEADER_PREFIX, check_key, key_headers

PROTOCOLS = ("grpc", "http")
MODES = ("infer", "async_infer", "stream")
#: The ensemble config parameters that describe the served pipeline's input.
PARAM_INPUT_KIND = "towhee_input_kind"
PARAM_MAX_REQUEST_BYTES = "towhee_max_request_bytes"
PARAM_MAX_ITEM_BYTES = "towhee_max_item_bytes"
TEXT_KIND = "text"
_URL_PREFIXES = ("http://", "https://")
#: Triton's refusal of a restricted API (HTTP 403 / gRPC UNAVAILABLE), naming the header.
_RESTRICTED = re.compile(r"is restricted, expecting header '([^']+)'")


@dataclasses.dataclass(frozen=True)
class ServedInput:
    """What a served pipeline's ensemble config says about its input; ``None``: not said
    (repositories built before towhee_rt recorded it)."""

    #: The first operator's input: ``'image'``, ``'text'``, ...
    kind: Optional[str] = None
    #: Bytes one request (all its items) and one item may carry.
    max_request_bytes: Optional[int] = None
    max_item_bytes: Optional[int] = None

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> "ServedInput":
        """Read the ``towhee_*`` model config parameters (name -> string value)."""
        def number(name: str) -> Optional[int]:
            value = str(parameters.get(name, "")).strip()
            return int(value) if value.isdigit() and int(value) > 0 else None

        return cls(parameters.get(PARAM_INPUT_KIND) or None, number(PARAM_MAX_REQUEST_BYTES),
                   number(PARAM_MAX_ITEM_BYTES))


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
    ``api_key``: the key the server was started with (``towhee_rt.serve(..., api_key=...)``),
    sent on every call. ``headers``: more request headers (gRPC: metadata, names lower-cased)
    sent on every call, e.g. for a proxy in front of the server. ``timeout`` (seconds) bounds
    each request and each URL download.
    """

    def __init__(self, url: str = "127.0.0.1:8001", model_name: str = "pipeline",
                 protocol: str = "grpc", timeout: float = 60.0,
                 on_request: Optional[Callable[[RequestRecord], None]] = None,
                 api_key: Optional[str] = None, headers: Optional[Mapping[str, str]] = None):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.url = url.split("://", 1)[-1]
        self.model_name = model_name
        self.protocol = protocol
        self.timeout = timeout
        self.on_request = on_request
        self._api_key = None if api_key is None else check_key(api_key, "api_key")
        self.headers = request_headers(protocol, self._api_key, headers)
        self._local = threading.local()
        self._clients: List[Any] = []
        self._lock = threading.Lock()
        self._inputs, self._outputs = self._read_metadata()
        #: What the server said about its input (kind and byte limits).
        self.served = self._read_served_input()

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
                try:
                    for future in as_completed(futures):
                        yield from future.result()
                except BaseException:  # e.g. a refused key: do not send the other batches
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        finally:
            if close:
                self.close()

    def ready(self) -> bool:
        """Whether the server and this pipeline's model are ready."""
        client = self._client()
        return bool(client.is_server_ready(headers=self.headers)
                    and client.is_model_ready(self.model_name, headers=self.headers))

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
                meta = client.get_model_metadata(self.model_name, headers=self.headers,
                                                 as_json=True)
            else:
                meta = client.get_model_metadata(self.model_name, headers=self.headers)
        except Exception as exc:  # noqa: BLE001 - re-raised with what to do
            raise self._refusal(_error_text(exc)) or ClientError(
                f"cannot read model {self.model_name!r} from the Triton server at {self.url} "
                f"over {self.protocol}: {exc}. Is the server running (python -m "
                f"towhee_rt.serve REPO) and is the url the {self.protocol} port?") from None
        return list(meta["inputs"]), [o["name"] for o in meta["outputs"]]

    def _read_served_input(self) -> ServedInput:
        """The input kind and byte limits from the model's config parameters."""
        client = self._client()
        try:
            if self.protocol == "grpc":
                config = client.get_model_config(self.model_name, headers=self.headers,
                                                 as_json=True)["config"]
            else:
                config = client.get_model_config(self.model_name, headers=self.headers)
        except Exception as exc:  # noqa: BLE001 - re-raised with what to do
            raise self._refusal(_error_text(exc)) or ClientError(
                f"cannot read the config of model {self.model_name!r} from the Triton server "
                f"at {self.url}: {exc}") from None
        parameters = {name: (value or {}).get("string_value", "")
                      for name, value in (config.get("parameters") or {}).items()}
        return ServedInput.from_parameters(parameters)

    def _refusal(self, text: str) -> Optional[ClientError]:
        """The :class:`ClientError` for Triton refusing a missing or wrong key in ``text``;
        ``None`` for any other error."""
        match = _RESTRICTED.search(text or "")
        if not match:
            return None
        header = match.group(1)
        name = header[len(GRPC_HEADER_PREFIX):] if header.startswith(GRPC_HEADER_PREFIX) \
            else header
        where = f"the Triton server at {self.url} ({self.protocol})"
        if name != API_KEY_HEADER:
            return ClientError(f"{where} restricts this API to requests carrying the header "
                              f"{header!r} (Triton's --http-restricted-api/"
                              "--grpc-restricted-protocol); pass it with headers={"
                              f"{header!r}: ...}}")
        how = ("Client(url, api_key=...) or dc(items).remote(url, api_key=...), the key the "
               "server was started with (towhee_rt.serve(repo, api_key=...), towhee-rt serve "
               "--api-key-file FILE, or TOWHEE_RT_API_KEY for a container)")
        if self._api_key is None:
            return ClientError(f"{where} requires an API key for inference and model configs, "
                              f"and none was sent; pass it: {how}")
        return ClientError(f"{where} refused the API key this client sent (header "
                          f"{API_KEY_HEADER}): it is not the key the server was started with; "
                          f"pass the right one: {how}")

    def _run_batch(self, items: Sequence[Any], batch: List[int]) -> List[Tuple[int, Any]]:
        """Encode and send ``batch`` (indices into ``items``) in requests under the server's
        byte limit; each index with its result or ItemError."""
        out: List[Tuple[int, Any]] = []
        ready: List[Tuple[int, Any, int]] = []  # (index, payload, bytes)
        for i in batch:
            try:
                payload = self._encode(items[i])
                ready.append((i, payload, _nbytes(payload)))
            except OperatorInputError as exc:
                out.append((i, ItemError.from_failure(ItemFailure.from_exception(None, i, exc),
                                                      i, _source(items[i], self.served.kind))))
        for group in split_by_bytes([size for _, _, size in ready],
                                    self.served.max_request_bytes):
            chosen = [ready[k] for k in group]
            out += self._send_group(items, [i for i, _, _ in chosen],
                                    [payload for _, payload, _ in chosen])
        return out

    def _send_group(self, items: Sequence[Any], indices: List[int],
                    payloads: List[Any]) -> List[Tuple[int, Any]]:
        """Send encoded ``payloads`` in one request; on item failures, send the rest again."""
        try:
            rows = self._send(payloads)
            return list(zip(indices, rows))
        except _RequestFailed as failed:
            by_position = {f.index: f for f in failed.failures if 0 <= f.index < len(indices)}
            if not by_position:  # no item named: transport, or a request-level error
                if len(indices) == 1:
                    return [(indices[0], ItemError(indices[0], None, failed.text))]
                return [pair for k in range(len(indices))
                        for pair in self._send_group(items, [indices[k]], [payloads[k]])]
        kind = self.served.kind
        out = [(indices[k], ItemError.from_failure(f, indices[k], _source(items[indices[k]],
                                                                         kind)))
               for k, f in by_position.items()]
        rest = [k for k in range(len(indices)) if k not in by_position]
        if rest:
            out += self._send_group(items, [indices[k] for k in rest],
                                    [payloads[k] for k in rest])
        return out

    def _encode(self, value: Any) -> Any:
        """What is sent for one item (see :func:`encode_item`), checked against the limits."""
        if not self._inputs or self._inputs[0]["datatype"] != "BYTES":
            return np.asarray(value)
        return encode_item(value, self.served, timeout=self.timeout)

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
            result = self._client().infer(self.model_name, inputs, outputs=outputs,
                                          headers=self.headers, **kwargs)
        except Exception as exc:  # noqa: BLE001 - becomes per-item errors
            text = _error_text(exc)
            error = self._refusal(text) or _RequestFailed(decode_failures(text), text)
            raise error from None
        finally:
            if self.on_request is not None:
                self.on_request(RequestRecord(len(values), time.perf_counter() - start, error))
        arrays = {name: result.as_numpy(name) for name in self._outputs}
        if len(arrays) == 1:
            return list(next(iter(arrays.values())))
        return [{name: a[i] for name, a in arrays.items()} for i in range(len(values))]


def request_headers(protocol: str, api_key: Optional[str] = None,
                    headers: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The headers (HTTP) or metadata (gRPC: names lower-cased, as gRPC requires) sent on
    every call: ``headers`` as given, then ``api_key`` under its name for ``protocol``."""
    out: Dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigError(f"headers must map names to string values, got {name!r}: "
                              f"{value!r}")
        out[name.lower() if protocol == "grpc" else name] = value
    out.update(key_headers(protocol, api_key=api_key))
    return out


def split_by_bytes(sizes: Sequence[int], limit: Optional[int]) -> List[List[int]]:
    """Consecutive groups of positions whose ``sizes`` add up to at most ``limit`` (a single
    size over it forms its own group); one group when there is no limit."""
    if not sizes:
        return []
    if not limit:
        return [list(range(len(sizes)))]
    groups: List[List[int]] = [[]]
    total = 0
    for k, size in enumerate(sizes):
        if groups[-1] and total + size > limit:
            groups.append([])
            total = 0
        groups[-1].append(k)
        total += size
    return groups


def _to_array(values: List[Any], datatype: str) -> np.ndarray:
    if datatype != "BYTES":
        return np.stack([np.asarray(v) for v in values])
    array = np.empty((len(values), 1), dtype=np.object_)
    for i, value in enumerate(values):
        array[i, 0] = value if isinstance(value, bytes) else encode_item(value)
    return array


def encode_item(value: Any, served: ServedInput = ServedInput(), timeout: float = 60.0) -> bytes:
    """What is sent for one item to a pipeline whose input is described by ``served``.

    Text pipelines: ``str`` as UTF-8, bytes as they are. Other (image) pipelines: bytes as they
    are, a local file (path or ``file://`` URL) read, an ``http(s)://`` URL downloaded with
    ``timeout`` seconds in all. Unknown kind (older repositories): a local file read, any other
    string as UTF-8. Raises :class:`~towhee_rt.backends._operator.OperatorInputError` for an
    item that cannot be sent, and its subclass ``OperatorLimitError`` for one over the server's
    ``max_item_bytes`` or ``max_request_bytes``.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif served.kind == TEXT_KIND:
        if not isinstance(value, str):
            raise OperatorInputError(f"expected text as str or UTF-8 bytes, got "
                                     f"{type(value).__name__}")
        data = value.encode("utf-8")
    elif _is_url(value) and served.kind is not None:
        data = _download(value, served, timeout)
    elif _local_file(value) is not None:
        data = _read_file(_local_file(value), served)
    elif served.kind is not None:
        raise OperatorInputError(
            "no such local file, and not an http(s):// URL; expected the path of a file, a URL "
            "or bytes", source=os.fspath(value) if isinstance(value, (str, os.PathLike))
            else f"<{type(value).__name__} item>")
    elif isinstance(value, (str, os.PathLike)):
        data = os.fspath(value).encode("utf-8")
    else:
        raise OperatorInputError(f"cannot send an item of type {type(value).__name__}; "
                                 "expected a path, a URL, bytes or a string")
    check_item_size(len(data), served)
    return data


def check_item_size(size: int, served: ServedInput, source: Optional[str] = None) -> None:
    """Raise ``OperatorLimitError`` when an item of ``size`` bytes is over the server's
    ``max_item_bytes`` or its ``max_request_bytes`` (a request holds at least the item)."""
    for limit, name, what in ((served.max_item_bytes, "max_item_bytes", ""),
                              (served.max_request_bytes, "max_request_bytes",
                               " for a whole request")):
        if limit and size > limit:
            raise OperatorLimitError(
                f"the item carries {size:,} bytes, more than the server's {name}={limit:,}"
                f"{what}, so it was not sent; the limit is set by pipeline_config({name}=...) "
                "when building the repository", source=source)


def _download(url: str, served: ServedInput, timeout: float) -> bytes:
    cap = served.max_item_bytes or served.max_request_bytes or DEFAULT_MAX_ITEM_BYTES
    try:  # the user's own process: their private networks are theirs to fetch from
        return fetch_url(url, max_bytes=cap, deadline_s=timeout, allow_private=True)
    except OperatorLimitError as exc:
        if "larger than max_bytes" in exc.message:
            raise OperatorLimitError(
                f"the download is larger than the server's max_item_bytes={cap:,}, so it was "
                "not sent; the limit is set by pipeline_config(max_item_bytes=...) when "
                "building the repository", source=url) from None
        raise OperatorLimitError(f"the download took longer than the client's timeout="
                                 f"{timeout:g}s; raise timeout= (Client(..., timeout=...), "
                                 "remote(..., timeout=...))", source=url) from None


def _read_file(path: str, served: ServedInput) -> bytes:
    cap = served.max_item_bytes or served.max_request_bytes
    try:
        check_item_size(os.path.getsize(path), served, source=path)
        with open(path, "rb") as f:
            return f.read(cap + 1) if cap else f.read()
    except OSError as exc:
        raise OperatorInputError(f"cannot read the file ({exc.strerror or exc})",
                                 source=path) from None


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(_URL_PREFIXES)


def _source(value: Any, kind: Optional[str]) -> Optional[str]:
    """How an item is named in its error: its local file or URL (not for text pipelines)."""
    if kind == TEXT_KIND:
        return None
    if _is_url(value) and kind is not None:
        return value
    return _local_file(value)


def _nbytes(payload: Any) -> int:
    return len(payload) if isinstance(payload, bytes) else int(getattr(payload, "nbytes", 0))


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
