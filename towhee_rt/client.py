"""A typed tritonclient wrapper for served towhee_rt pipelines (gRPC or HTTP).

Example::

    from towhee_rt import Client
    with Client('127.0.0.1:8001', model_name='pipeline') as client:
        vectors = client.infer(['a.jpg', 'b.jpg'], mode='async_infer', concurrency=4)

Items become one request each (``batch_size=1``, the default) or ``batch_size`` per request,
split further so that no request is over the served model's ``max_batch_size`` (read from its
config: a larger ``batch_size`` gives requests of ``max_batch_size`` items) or its
``max_request_bytes``. What is sent for an item follows the served pipeline's input kind (see
:mod:`towhee_rt.client_inputs`).

``api_key`` is sent on every call (HTTP header ``towhee-api-key``, gRPC metadata
``triton-grpc-protocol-towhee-api-key``), with any ``headers`` given. A server that wants a key
it did not get answers with a :class:`ClientError` saying how to pass it.

A request whose items failed carries one structured failure per item (see
``towhee_rt.backends.operator_base.ItemFailure``): each such item becomes an :class:`ItemError` of
the matching kind, named by the caller's index (and local file name or URL), and the other items
of that request are sent again without them.

Faults and overload: ``timeout`` bounds each request, retries and waits included; an unreachable
server is retried, then one :class:`~towhee_rt.errors.ServerUnavailableError` for the call; a
busy server or a request out of time fails that request's items (see
:mod:`towhee_rt.client_retry`). Several urls (replicas of one server): see
:mod:`towhee_rt.client_failover`.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .backends.operator_base import OperatorInputError
from .backends.wire import SHAPES_SUFFIX, ItemFailure, crop_items, decode_failures
from .client_inputs import (encode_item, item_source, max_batch_size, payload_bytes,
                            request_headers, served_input, split_by_bytes, to_array)
from .client_replicas import parse_urls
from .client_retry import (BUSY, DEADLINE_SLACK, DEFAULT_BACKOFF, DEFAULT_MAX_BACKOFF,
                           DEFAULT_RETRIES, REFUSED, TIMEOUT, UNAVAILABLE, Cancelled, Rejected,
                           RequestFailed, RetryPolicy, classify_error, connection_options,
                           error_text, refusal_error, rejection_error)
from .errors import (ClientError, ConfigError, ItemError, PipelineError, ServerUnavailableError,
                     TowheeRTError, check_error_mode)
from .triton.flags import check_key

__all__ = ["Client", "RequestRecord"]

PROTOCOLS = ("grpc", "http")
MODES = ("infer", "async_infer", "stream")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """What ``Client(on_request=...)`` is told after each request it sent."""

    #: Items in the request.
    items: int
    #: Wall time of the request, from sending to the answer.
    seconds: float
    #: The failure, or ``None`` when every item succeeded.
    error: Optional[BaseException] = None
    #: The server ("host:port") the request was sent to: with several urls, which replica.
    url: Optional[str] = None


class Client:
    """Query one served pipeline (a Triton model) with lists of items.

    ``on_request(record)`` is called after every request this client sends (in the thread that
    sent it) with a :class:`RequestRecord`: for latency statistics, logging or metrics.
    ``api_key``: the key the server was started with (``towhee_rt.serve(..., api_key=...)``),
    sent on every call. ``headers``: more request headers (gRPC: metadata, names lower-cased)
    sent on every call, e.g. for a proxy in front of the server. ``timeout`` (seconds) bounds
    each request (its retries and waits included; the server is told, and drops the request
    from its queues when it passes) and each URL download. ``retries`` and ``backoff``: how
    often and after how long a request to an unreachable server is sent again (see
    :class:`~towhee_rt.client_retry.RetryPolicy`; a busy server gets one retry). Raises
    :class:`~towhee_rt.errors.ServerUnavailableError` when the server cannot be reached.

    ``url``: ``"host:port"``; several replicas of one server as a list or tuple of them, or
    one string with commas, give a :class:`~towhee_rt.client_failover.ReplicaClient`, which
    spreads the requests and fails over between them.
    """

    def __new__(cls, url: Any = "127.0.0.1:8001", *args: Any, **kwargs: Any) -> "Client":
        if cls is Client and len(parse_urls(url)) > 1:
            from .client_failover import ReplicaClient

            cls = ReplicaClient
        return super().__new__(cls)

    def __init__(self, url: Any = "127.0.0.1:8001", model_name: str = "pipeline",
                 protocol: str = "grpc", timeout: float = 60.0,
                 on_request: Optional[Callable[[RequestRecord], None]] = None,
                 api_key: Optional[str] = None, headers: Optional[Mapping[str, str]] = None,
                 retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.url = ",".join(parse_urls(url))
        self.model_name = model_name
        self.protocol = protocol
        self.timeout = timeout
        self.on_request = on_request
        self.retry = RetryPolicy(retries=retries, backoff=backoff,
                                 max_backoff=max(backoff, DEFAULT_MAX_BACKOFF))
        self._api_key = None if api_key is None else check_key(api_key, "api_key")
        self.headers = request_headers(protocol, self._api_key, headers)
        # (thread, url) -> that thread's tritonclient for that server
        self._clients: Dict[Tuple[threading.Thread, str], Any] = {}
        self._lock = threading.Lock()
        self._load_model()

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
        """Yield ``(index, result or ItemError)`` as results arrive, ``concurrency`` in flight.

        Requests hold ``batch_size`` items, or the model's ``max_batch_size`` when that is
        smaller. Raises :class:`~towhee_rt.errors.ServerUnavailableError` (once, the other
        requests stopped) when the server cannot be reached within the retries.
        """
        _check_positive(batch_size, "batch_size")
        _check_positive(concurrency, "concurrency")
        size = self._request_size(batch_size)
        batches = [list(range(k, min(k + size, len(items)))) for k in range(0, len(items), size)]
        stop = threading.Event()  # set when the call fails: other requests stop retrying
        try:
            if concurrency == 1:
                for batch in batches:
                    yield from self._run_batch(items, batch, stop)
                return
            with ThreadPoolExecutor(concurrency, thread_name_prefix="towhee_rt-client") as pool:
                futures = [pool.submit(self._run_batch, items, batch, stop) for batch in batches]
                try:
                    for future in as_completed(futures):
                        yield from future.result()
                except BaseException:  # e.g. a refused key: do not send the other batches
                    stop.set()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        finally:
            if close:
                self.close()
            else:
                self._close_finished_threads()

    def ready(self) -> bool:
        """Whether the server and this pipeline's model are ready."""
        client = self._client()
        return bool(client.is_server_ready(headers=self.headers)
                    and client.is_model_ready(self.model_name, headers=self.headers))

    def close(self) -> None:
        """Close every connection this client opened."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        _close_quietly(clients)

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

    def _serving_url(self) -> str:
        """The server this thread's requests go to now."""
        return self.url

    def _client(self):
        """One tritonclient per thread (the HTTP client is not thread-safe) and server, keyed by
        the thread itself: a thread id may be reused by a later thread."""
        key = (threading.current_thread(), self._serving_url())
        client = self._clients.get(key)
        if client is None:
            client = self._module().InferenceServerClient(
                key[1], **connection_options(self.protocol, self.timeout))
            with self._lock:
                self._clients[key] = client
        return client

    def _close_finished_threads(self) -> None:
        """Close the connections of threads that have ended (each call's worker threads), so a
        long-lived client does not gather one connection per worker of every call."""
        with self._lock:
            ended = [key for key in self._clients if not key[0].is_alive()]
            clients = [self._clients.pop(key) for key in ended]
        _close_quietly(clients)

    def _drop_client(self) -> None:
        """Close this thread's connection, so that the next call opens a fresh one."""
        with self._lock:
            client = self._clients.pop((threading.current_thread(), self._serving_url()), None)
        _close_quietly([client] if client is not None else [])

    def _load_model(self) -> None:
        """Read the served model's inputs, outputs and limits (with retries)."""
        self._use_model(self._read(self._get_metadata, f"read model {self.model_name!r}"),
                        self._read(self._get_config,
                                   f"read the config of model {self.model_name!r}"))

    def _use_model(self, meta: Dict[str, Any], config: Dict[str, Any]) -> None:
        """Take the model's metadata and config (JSON, field names as in config.pbtxt)."""
        self._inputs, self._outputs = list(meta["inputs"]), [o["name"] for o in meta["outputs"]]
        #: What the server said about its input (kind and byte limits).
        self.served = served_input(config)
        #: The most items one request may hold (the model's ``max_batch_size``; ``None``: no
        #: limit said).
        self.max_batch_size = max_batch_size(config)

    def _get_metadata(self, remaining: float) -> Dict[str, Any]:
        """One read of the model's metadata; raises tritonclient's error."""
        if self.protocol == "grpc":
            return self._client().get_model_metadata(
                self.model_name, headers=self.headers, as_json=True, client_timeout=remaining)
        return self._client().get_model_metadata(self.model_name, headers=self.headers)

    def _get_config(self, remaining: float) -> Dict[str, Any]:
        """One read of the model's config as JSON; raises tritonclient's error."""
        if self.protocol == "grpc":
            return self._client().get_model_config(
                self.model_name, headers=self.headers, as_json=True,
                client_timeout=remaining)["config"]
        return self._client().get_model_config(self.model_name, headers=self.headers)

    def _read(self, read: Callable[[float], Any], doing: str) -> Any:
        """``read(remaining_seconds)`` with retries; errors say what to do."""
        start = time.monotonic()
        try:
            return self._call(read, start + self.timeout, doing=doing)
        except Rejected as exc:  # no answer in time: reads are not queued behind inferences
            raise ServerUnavailableError(
                self.url, self.protocol, f"no answer within timeout={self.timeout:g}s "
                f"({exc.text})", exc.attempts, time.monotonic() - start, doing) from None
        except RequestFailed as exc:
            raise ClientError(
                f"cannot {doing} from the Triton server at {self.url} ({self.protocol}): "
                f"{exc.text}. Check the model name (model_name=; towhee-rt serve prints the "
                f"served models) and that the url is the server's {self.protocol} "
                "endpoint") from None

    def _request_size(self, batch_size: int) -> int:
        """Items per request: ``batch_size``, at most the model's ``max_batch_size``."""
        limit = self.max_batch_size
        if limit is None or batch_size <= limit:
            return batch_size
        log.info("batch_size=%d is over max_batch_size=%d of model %r at %s: sending requests "
                 "of %d items", batch_size, limit, self.model_name, self.url, limit)
        return limit

    def _call(self, call: Callable[[float], Any], deadline: float,
              stop: Optional[threading.Event] = None, doing: str = "send requests") -> Any:
        """``call(remaining_seconds)``, sent again per :attr:`retry` while the failure is
        transient and ``deadline`` (``time.monotonic()``) allows; a failure is raised as
        what it means (see :meth:`_failure`)."""
        stop = stop or threading.Event()
        start = time.monotonic()
        retried = busy_retried = 0
        while True:
            if stop.is_set():
                raise Cancelled()
            try:
                return call(deadline - time.monotonic())
            except TowheeRTError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified, then retried or re-raised
                kind, text = self._classify(exc, deadline)
            now = time.monotonic()
            delay = self.retry.delay(retried)
            if not (self.retry.should_retry(kind, retried, busy_retried)
                    and now + delay < deadline):
                raise self._failure(kind, text, retried + 1, now - start, doing)
            retried += 1
            busy_retried += kind == BUSY
            if stop.wait(delay):
                raise Cancelled()

    def _classify(self, exc: BaseException, deadline: float) -> Tuple[str, str]:
        """(kind, text) of a failed call (:func:`classify_error`); a busy answer at the
        deadline is the deadline, and an unreachable server's connection is dropped."""
        kind, text = classify_error(exc), error_text(exc)
        if kind == BUSY and time.monotonic() >= deadline - DEADLINE_SLACK:
            kind = TIMEOUT  # Triton dropped it at the deadline this client sent
        if kind == UNAVAILABLE:
            self._drop_client()
        return kind, text

    def _failure(self, kind: str, text: str, attempts: int, seconds: float,
                 doing: str) -> Exception:
        """The exception for a request that failed as ``kind`` (:func:`classify_error`)."""
        if kind == REFUSED:
            return refusal_error(text, self.url, self.protocol,
                                 key_sent=self._api_key is not None) or ClientError(text)
        if kind == UNAVAILABLE:
            return ServerUnavailableError(self.url, self.protocol, text, attempts, seconds,
                                          doing)
        if kind in (BUSY, TIMEOUT):
            return Rejected(kind, text, attempts)
        return RequestFailed(decode_failures(text), text)

    def _run_batch(self, items: Sequence[Any], batch: List[int],
                   stop: threading.Event) -> List[Tuple[int, Any]]:
        """Encode and send ``batch`` (indices into ``items``) in requests under the server's
        byte limit; each index with its result or ItemError."""
        out: List[Tuple[int, Any]] = []
        ready: List[Tuple[int, Any, int]] = []  # (index, payload, bytes)
        for i in batch:
            try:
                payload = self._encode(items[i])
                ready.append((i, payload, payload_bytes(payload)))
            except OperatorInputError as exc:
                out.append((i, ItemError.from_failure(ItemFailure.from_exception(None, i, exc),
                                                      i, self._source(items, i))))
        for group in split_by_bytes([size for _, _, size in ready],
                                    self.served.max_request_bytes):
            chosen = [ready[k] for k in group]
            out += self._send_group(items, [i for i, _, _ in chosen],
                                    [payload for _, payload, _ in chosen], stop)
        return out

    def _send_group(self, items: Sequence[Any], indices: List[int], payloads: List[Any],
                    stop: threading.Event) -> List[Tuple[int, Any]]:
        """Send encoded ``payloads`` in one request (retried per :attr:`retry` within
        ``timeout``); on item failures, send the rest again."""
        try:
            rows = self._call(lambda remaining: self._send(payloads, remaining),
                              time.monotonic() + self.timeout, stop)
            return list(zip(indices, rows))
        except Rejected as rejected:
            return [(i, rejection_error(rejected.kind, rejected.text, rejected.attempts,
                                        self.timeout, i, self._source(items, i)))
                    for i in indices]
        except RequestFailed as failed:
            by_position = {f.index: f for f in failed.failures if 0 <= f.index < len(indices)}
            if not by_position:  # no item named: transport, or a request-level error
                if len(indices) == 1:
                    return [(indices[0], ItemError(indices[0], None, failed.text))]
                return [pair for k in range(len(indices))
                        for pair in self._send_group(items, [indices[k]], [payloads[k]], stop)]
        out = [(indices[k], ItemError.from_failure(f, indices[k], self._source(items, indices[k])))
               for k, f in by_position.items()]
        rest = [k for k in range(len(indices)) if k not in by_position]
        if rest:
            out += self._send_group(items, [indices[k] for k in rest],
                                    [payloads[k] for k in rest], stop)
        return out

    def _source(self, items: Sequence[Any], index: int) -> Optional[str]:
        """How item ``index`` is named in its error (see :func:`item_source`)."""
        return item_source(items[index], self.served.kind)

    def _encode(self, value: Any) -> Any:
        """What is sent for one item (see :func:`encode_item`), checked against the limits."""
        if not self._inputs or self._inputs[0]["datatype"] != "BYTES":
            return np.asarray(value)
        return encode_item(value, self.served, timeout=self.timeout)

    def _send(self, values: List[Any], timeout: float) -> List[Any]:
        """One request of ``values``; the server drops it if it is still queued after
        ``timeout`` seconds (the client stops waiting then too). Raises tritonclient's error."""
        module = self._module()
        inputs = []
        for spec in self._inputs:
            array = to_array(values, spec["datatype"])
            tensor = module.InferInput(spec["name"], list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput(name) for name in self._outputs]
        # Triton's per-request timeout, in microseconds (0 would mean none).
        kwargs: Dict[str, Any] = {"timeout": max(1, int(timeout * 1e6))}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = max(timeout, 1e-3)
        start, error = time.perf_counter(), None
        try:
            result = self._client().infer(self.model_name, inputs, outputs=outputs,
                                          headers=self.headers, **kwargs)
        except Exception as exc:  # noqa: BLE001 - recorded, then classified by _call
            error = exc
            raise
        finally:
            if self.on_request is not None:
                self.on_request(RequestRecord(len(values), time.perf_counter() - start, error,
                                              self._serving_url()))
        arrays = {name: result.as_numpy(name) for name in self._outputs}
        for name in [n for n in arrays if n + SHAPES_SUFFIX in arrays]:
            # Items of different shapes arrive zero-padded, with their shapes beside them.
            arrays[name] = crop_items(arrays[name], arrays.pop(name + SHAPES_SUFFIX))
        if len(arrays) == 1:
            return list(next(iter(arrays.values())))
        return [{name: a[i] for name, a in arrays.items()} for i in range(len(values))]


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _close_quietly(clients: List[Any]) -> None:
    """Close tritonclients; a broken connection may fail to close, and it is gone anyway."""
    for client in clients:
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass
