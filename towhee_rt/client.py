"""A typed tritonclient wrapper for served towhee_rt pipelines (gRPC or HTTP).

Example::

    from towhee_rt import Client
    with Client('127.0.0.1:8001', model_name='pipeline') as client:
        vectors = client.infer(['a.jpg', 'b.jpg'], mode='async_infer', concurrency=4)

Items become one request each (``batch_size=1``, the default) or ``batch_size`` per request,
split further so that no request is over the served model's ``max_batch_size`` (read from its
config: a larger ``batch_size`` gives requests of ``max_batch_size`` items) or its
``max_request_bytes``.

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

Faults and overload (see :func:`classify_error` and :class:`RetryPolicy`): ``timeout`` bounds
each request, retries and waits included, and travels with it (Triton's per-request
``timeout``; an ensemble hands it to each of its steps), so a request the client gave up on is
dropped from the server's queues instead of computed. A server that cannot be reached is
retried (a fresh connection each time, so a server restarted on the same port is picked up),
then reported by one :class:`~towhee_rt.errors.ServerUnavailableError` for the whole call. A
request a busy server turns away (full queue, queue timeout) is retried once after a pause,
then its items fail as :class:`~towhee_rt.errors.ServerBusyError`; a request not answered in
time fails its items as :class:`~towhee_rt.errors.DeadlineExceededError`. Both are per item:
the call's other requests keep their results.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .backends._fetch import fetch_url
from .backends._operator import (SHAPES_SUFFIX, ItemFailure, OperatorInputError,
                                 OperatorLimitError, crop_items, decode_failures)
from .errors import (ClientError, ConfigError, DeadlineExceededError, ItemError, PipelineError,
                     ServerBusyError, ServerUnavailableError, TowheeRTError, check_error_mode)
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
#: Triton's words when a model's queue policy turns a request away (gRPC UNAVAILABLE, HTTP 503).
_QUEUE_FULL = "Exceeds maximum queue size"
_QUEUE_TIMEOUT = "Request timeout expired"
#: A model being reloaded by the server's supervisor: its stub died ("not healthy"), or no
#: version is loaded for a moment. Sent again, the request reaches the reloaded model.
_RECOVERING = re.compile(r"Stub process '[^']*' is not healthy|has no available versions")
#: OS errors that mean the connection could not be made or was lost.
_CONNECTION_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
                                errno.EPIPE, errno.EHOSTUNREACH, errno.ENETUNREACH,
                                errno.EHOSTDOWN, errno.ENETDOWN})
#: What a failed call means (:func:`classify_error`).
UNAVAILABLE, BUSY, TIMEOUT, REFUSED, OTHER = "unavailable", "busy", "timeout", "refused", "other"
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.25
DEFAULT_MAX_BACKOFF = 4.0
#: A queue timeout this close to the client's own deadline is that deadline (Triton checks
#: queued requests' timeouts only when it next looks at the queue, so it reports them late).
_DEADLINE_SLACK = 0.05
log = logging.getLogger(__name__)


def classify_error(exc: BaseException) -> str:
    """What a failed tritonclient call means, for deciding whether to send it again.

    :data:`REFUSED`: Triton refused a missing or wrong key (never retried).
    :data:`BUSY`: a model's queue policy turned the request away: queue full, or the request
    waited past its queue timeout (gRPC UNAVAILABLE / HTTP 503 with Triton's words).
    :data:`TIMEOUT`: no answer within the client's deadline (gRPC DEADLINE_EXCEEDED, a socket
    timeout over HTTP). :data:`UNAVAILABLE`: the server cannot be reached or the connection was
    lost (any other gRPC UNAVAILABLE or HTTP 503, refused/reset/closed connections), or the
    model is being reloaded after its stub died.
    :data:`OTHER`: anything else, e.g. the items' own failures or an invalid request.
    """
    text = _error_text(exc)
    status = _status(exc)
    if _RESTRICTED.search(text):
        return REFUSED
    if _QUEUE_FULL in text or _QUEUE_TIMEOUT in text:
        return BUSY
    if status == "StatusCode.DEADLINE_EXCEEDED" or isinstance(exc, TimeoutError):
        return TIMEOUT
    if status in ("StatusCode.UNAVAILABLE", "503") or _is_connection_error(exc) \
            or _RECOVERING.search(text):
        return UNAVAILABLE
    return OTHER


def _status(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return str(status() if callable(status) else status or "")


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError):  # refused, reset, aborted, broken pipe
        return True
    if isinstance(exc, OSError) and exc.errno in _CONNECTION_ERRNOS:
        return True
    # geventhttpclient (under tritonclient.http) when the server closes the connection mid-call
    return any(cls.__name__ == "HTTPConnectionClosed" for cls in type(exc).__mro__)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Which failed requests the client sends again, and when; inference of embeddings is
    idempotent, so sending a request twice is safe.

    An unreachable server (:data:`UNAVAILABLE`) is retried up to ``retries`` times, a busy one
    (:data:`BUSY`) ``busy_retries`` times (default once: more would add load to a server that
    is already overloaded); nothing else is retried. Retry ``k`` (from 0) waits a random time
    between half and all of ``min(max_backoff, backoff * 2**k)`` seconds, the jitter keeping
    many clients from retrying in step. The caller also stops at the request's deadline.
    Example::

        >>> RetryPolicy(retries=3, backoff=0.5).delay(2, draw=lambda: 1.0)
        2.0
    """

    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    busy_retries: int = 1

    def __post_init__(self):
        for name in ("retries", "busy_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")

    def delay(self, retry: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first); ``draw`` returns
        a number in [0, 1)."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** retry)
        return ceiling * (0.5 + 0.5 * draw())

    def should_retry(self, kind: str, retried: int, busy_retried: int = 0) -> bool:
        """Whether a request that failed as ``kind``, after ``retried`` retries of which
        ``busy_retried`` followed a busy server, is sent again (deadline aside)."""
        if kind == UNAVAILABLE:
            return retried < self.retries
        if kind == BUSY:
            return retried < self.retries and busy_retried < self.busy_retries
        return False

    def schedule(self, draw: Callable[[], float] = random.random) -> List[float]:
        """The waits of every retry an unreachable server would get, in order."""
        return [self.delay(k, draw) for k in range(self.retries)]


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


class _Rejected(Exception):
    """A request the server was too busy for (:data:`BUSY`) or that ran out of time
    (:data:`TIMEOUT`): each of its items fails alike."""

    def __init__(self, kind: str, text: str, attempts: int):
        super().__init__(text)
        self.kind, self.text, self.attempts = kind, text, attempts


class _Cancelled(Exception):
    """The call this request belongs to has already failed; stop retrying."""


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
    :class:`RetryPolicy`; a busy server gets one retry). Raises
    :class:`~towhee_rt.errors.ServerUnavailableError` when the server cannot be reached.
    """

    def __init__(self, url: str = "127.0.0.1:8001", model_name: str = "pipeline",
                 protocol: str = "grpc", timeout: float = 60.0,
                 on_request: Optional[Callable[[RequestRecord], None]] = None,
                 api_key: Optional[str] = None, headers: Optional[Mapping[str, str]] = None,
                 retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.url = url.split("://", 1)[-1]
        self.model_name = model_name
        self.protocol = protocol
        self.timeout = timeout
        self.on_request = on_request
        self.retry = RetryPolicy(retries=retries, backoff=backoff,
                                 max_backoff=max(backoff, DEFAULT_MAX_BACKOFF))
        self._api_key = None if api_key is None else check_key(api_key, "api_key")
        self.headers = request_headers(protocol, self._api_key, headers)
        self._local = threading.local()
        self._clients: List[Any] = []
        self._lock = threading.Lock()
        self._inputs, self._outputs = self._read_metadata()
        config = self._read_config()
        #: What the server said about its input (kind and byte limits).
        self.served = served_input(config)
        #: The most items one request may hold (the model's ``max_batch_size``; ``None``: no
        #: limit said).
        self.max_batch_size = max_batch_size(config)

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
            client = self._module().InferenceServerClient(self.url, **self._client_options())
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _client_options(self) -> Dict[str, Any]:
        if self.protocol == "http":
            return {"connection_timeout": self.timeout, "network_timeout": self.timeout}
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

    def _drop_client(self) -> None:
        """Close this thread's connection, so that the next call opens a fresh one."""
        client = getattr(self._local, "client", None)
        if client is None:
            return
        self._local.client = None
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
        try:
            client.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone
            pass

    def _read_metadata(self) -> Tuple[List[Dict[str, Any]], List[str]]:
        def read(remaining: float) -> Dict[str, Any]:
            if self.protocol == "grpc":
                return self._client().get_model_metadata(
                    self.model_name, headers=self.headers, as_json=True,
                    client_timeout=remaining)
            return self._client().get_model_metadata(self.model_name, headers=self.headers)

        meta = self._read(read, f"read model {self.model_name!r}")
        return list(meta["inputs"]), [o["name"] for o in meta["outputs"]]

    def _read_config(self) -> Dict[str, Any]:
        """The model's config as JSON (field names as in config.pbtxt)."""
        def read(remaining: float) -> Dict[str, Any]:
            if self.protocol == "grpc":
                return self._client().get_model_config(
                    self.model_name, headers=self.headers, as_json=True,
                    client_timeout=remaining)["config"]
            return self._client().get_model_config(self.model_name, headers=self.headers)

        return self._read(read, f"read the config of model {self.model_name!r}")

    def _read(self, read: Callable[[float], Any], doing: str) -> Any:
        """``read(remaining_seconds)`` with retries; errors say what to do."""
        start = time.monotonic()
        try:
            return self._call(read, start + self.timeout, doing=doing)
        except _Rejected as exc:  # no answer in time: reads are not queued behind inferences
            raise ServerUnavailableError(
                self.url, self.protocol, f"no answer within timeout={self.timeout:g}s "
                f"({exc.text})", exc.attempts, time.monotonic() - start, doing) from None
        except _RequestFailed as exc:
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
                raise _Cancelled()
            try:
                return call(deadline - time.monotonic())
            except TowheeRTError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified, then retried or re-raised
                kind, text = classify_error(exc), _error_text(exc)
            now = time.monotonic()
            if kind == BUSY and now >= deadline - _DEADLINE_SLACK:
                kind = TIMEOUT  # Triton dropped it at the deadline this client sent
            if kind == UNAVAILABLE:
                self._drop_client()
            delay = self.retry.delay(retried)
            if not (self.retry.should_retry(kind, retried, busy_retried)
                    and now + delay < deadline):
                raise self._failure(kind, text, retried + 1, now - start, doing)
            retried += 1
            busy_retried += kind == BUSY
            if stop.wait(delay):
                raise _Cancelled()

    def _failure(self, kind: str, text: str, attempts: int, seconds: float,
                 doing: str) -> Exception:
        """The exception for a request that failed as ``kind`` (:func:`classify_error`)."""
        if kind == REFUSED:
            return self._refusal(text) or ClientError(text)
        if kind == UNAVAILABLE:
            return ServerUnavailableError(self.url, self.protocol, text, attempts, seconds,
                                          doing)
        if kind in (BUSY, TIMEOUT):
            return _Rejected(kind, text, attempts)
        return _RequestFailed(decode_failures(text), text)

    def _rejection(self, rejected: _Rejected, index: int, source: Optional[str]) -> ItemError:
        """The item error of one item of a request the server was busy for or that timed
        out."""
        tries = "once" if rejected.attempts == 1 else f"{rejected.attempts} times"
        if rejected.kind == BUSY:
            return ServerBusyError(index, None, (
                f"the server is busy and turned the request away ({rejected.text}; sent "
                f"{tries}); send fewer requests at once (concurrency=), or give the model "
                "more room (op_config max_queue_size, queue_timeout_ms, instance_count)"),
                source)
        return DeadlineExceededError(index, None, (
            f"no answer within the client's timeout={self.timeout:g}s ({rejected.text}; "
            f"sent {tries}); the server drops requests it has not started by then. Raise "
            "timeout= (Client(...), remote(...)) or send fewer requests at once"), source)

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

    def _run_batch(self, items: Sequence[Any], batch: List[int],
                   stop: Optional[threading.Event] = None) -> List[Tuple[int, Any]]:
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
                                    [payload for _, payload, _ in chosen], stop)
        return out

    def _send_group(self, items: Sequence[Any], indices: List[int], payloads: List[Any],
                    stop: Optional[threading.Event] = None) -> List[Tuple[int, Any]]:
        """Send encoded ``payloads`` in one request (retried per :attr:`retry` within
        ``timeout``); on item failures, send the rest again."""
        try:
            rows = self._call(lambda remaining: self._send(payloads, remaining),
                              time.monotonic() + self.timeout, stop)
            return list(zip(indices, rows))
        except _Rejected as rejected:
            return [(i, self._rejection(rejected, i, _source(items[i], self.served.kind)))
                    for i in indices]
        except _RequestFailed as failed:
            by_position = {f.index: f for f in failed.failures if 0 <= f.index < len(indices)}
            if not by_position:  # no item named: transport, or a request-level error
                if len(indices) == 1:
                    return [(indices[0], ItemError(indices[0], None, failed.text))]
                return [pair for k in range(len(indices))
                        for pair in self._send_group(items, [indices[k]], [payloads[k]], stop)]
        kind = self.served.kind
        out = [(indices[k], ItemError.from_failure(f, indices[k], _source(items[indices[k]],
                                                                         kind)))
               for k, f in by_position.items()]
        rest = [k for k in range(len(indices)) if k not in by_position]
        if rest:
            out += self._send_group(items, [indices[k] for k in rest],
                                    [payloads[k] for k in rest], stop)
        return out

    def _encode(self, value: Any) -> Any:
        """What is sent for one item (see :func:`encode_item`), checked against the limits."""
        if not self._inputs or self._inputs[0]["datatype"] != "BYTES":
            return np.asarray(value)
        return encode_item(value, self.served, timeout=self.timeout)

    def _send(self, values: List[Any], timeout: Optional[float] = None) -> List[Any]:
        """One request of ``values``; the server drops it if it is still queued after
        ``timeout`` seconds (the client stops waiting then too). Raises tritonclient's error."""
        module = self._module()
        inputs = []
        for spec in self._inputs:
            array = _to_array(values, spec["datatype"])
            tensor = module.InferInput(spec["name"], list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput(name) for name in self._outputs]
        timeout = self.timeout if timeout is None else timeout
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
                self.on_request(RequestRecord(len(values), time.perf_counter() - start, error))
        arrays = {name: result.as_numpy(name) for name in self._outputs}
        for name in [n for n in arrays if n + SHAPES_SUFFIX in arrays]:
            # Items of different shapes arrive zero-padded, with their shapes beside them.
            arrays[name] = crop_items(arrays[name], arrays.pop(name + SHAPES_SUFFIX))
        if len(arrays) == 1:
            return list(next(iter(arrays.values())))
        return [{name: a[i] for name, a in arrays.items()} for i in range(len(values))]


def served_input(config: Mapping[str, Any]) -> ServedInput:
    """The input kind and byte limits from a model config's (JSON) parameters."""
    parameters = {name: (value or {}).get("string_value", "")
                  for name, value in (config.get("parameters") or {}).items()}
    return ServedInput.from_parameters(parameters)


def max_batch_size(config: Mapping[str, Any]) -> Optional[int]:
    """The most items one request may hold, from a model config (JSON); ``None`` when the
    model does not say (0: no batching dimension)."""
    try:
        value = int(config.get("max_batch_size") or 0)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


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
