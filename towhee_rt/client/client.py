"""The public :class:`Client`: one served pipeline behind one or several endpoints.

It composes the parts of this package: the endpoints (:mod:`.endpoints`), the one retry and
failover loop (:mod:`.retry`), the tritonclient calls (:mod:`.transport`), the model and its
check across endpoints (:mod:`.model`), and the cutting of items into requests
(:mod:`.batches`, :mod:`.inputs`). Constructing a client checks its arguments only; the model
is read from the server on first use.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import (ClientError, ConfigError, ItemError, PipelineError, ServerUnavailableError,
                      check_error_mode)
from ..triton.flags import check_key
from .batches import BatchSender, batches_of, run_concurrently
from .endpoints import Endpoint, EndpointSet, ReplicaStats, parse_urls
from .failures import (BUSY, OTHER, REFUSED, TIMEOUT, UNAVAILABLE, classify_error, error_text,
                       refusal_error)
from .inputs import ServedInput, item_source, request_headers
from .model import ModelReference, ServedModel
from .retry import (DEFAULT_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_RETRIES, GaveUp, RetryLoop,
                    RetryPolicy)
from .transport import Transport

__all__ = ["Client", "RequestRecord", "DEFAULT_CONCURRENCY", "PARAM_CLIENT_CONCURRENCY",
           "served_concurrency"]

PROTOCOLS = ("grpc", "http")
MODES = ("infer", "async_infer", "stream")
#: Requests in flight at once, by default, in every mode, when the served pipeline records none.
DEFAULT_CONCURRENCY = 4
#: The served model's config parameter in which ``towhee-rt tune`` records the requests in
#: flight it chose (the ensemble's ``parameters``): the client's default concurrency.
PARAM_CLIENT_CONCURRENCY = "towhee_client_concurrency"
#: A recorded concurrency above this is ignored (a hand edit must not open thousands of threads).
MAX_RECORDED_CONCURRENCY = 128
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

    Example::

        from towhee_rt import Client
        with Client('127.0.0.1:8001', model_name='pipeline') as client:
            vectors = client.infer(['a.jpg', 'b.jpg'])   # client.concurrency in flight

    ``url``: ``"host:port"``; several replicas of one server as a list or tuple of them, or one
    string with commas. Each request goes to the replica with the fewest requests in flight
    (ties in turn); an unreachable one is taken out for a backoff and its requests go to the
    others; only when every replica is down and none comes back within ``retries`` waits does
    the call raise one :class:`~towhee_rt.errors.ServerUnavailableError` (naming every url).
    Every replica must serve the same model (inputs, outputs, ``max_batch_size``, input kind,
    :attr:`fingerprint`): one that does not is refused with a
    :class:`~towhee_rt.errors.ClientError`.

    ``timeout`` (seconds) bounds each request (its retries and waits included; the server is
    told, and drops the request from its queues when it passes) and each URL download.
    ``retries`` and ``backoff``: how often and after how long a request to an unreachable
    server is sent again (waits doubling up to 4 s, with jitter); a busy server gets one retry.
    ``api_key``: the key the server was started with (``towhee_rt.serve(..., api_key=...)``),
    sent on every call; ``headers``: more request headers (gRPC: metadata, names lower-cased),
    e.g. for a proxy. ``on_request(record)`` is called after every request this client sends
    (in the thread that sent it) with a :class:`RequestRecord`.

    Requests in flight: a call's ``concurrency=`` argument when given (it always wins), else
    :attr:`concurrency`: the value ``towhee-rt tune`` chose and recorded in the served
    pipeline (config parameter ``towhee_client_concurrency``), else 4.

    Constructing a client does not contact the server: the model's metadata and config are
    read on first use (:meth:`infer`, :meth:`stream`, :attr:`served`, :attr:`max_batch_size`,
    :attr:`fingerprint`, :attr:`concurrency`).
    """

    def __init__(self, url: Union[str, Sequence[str]] = "127.0.0.1:8001",
                 model_name: str = "pipeline", protocol: str = "grpc", timeout: float = 60.0,
                 on_request: Optional[Callable[[RequestRecord], None]] = None,
                 api_key: Optional[str] = None, headers: Optional[Mapping[str, str]] = None,
                 retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        #: Every server's ``"host:port"``, in the order given; :attr:`url` joins them by commas.
        self.urls: Tuple[str, ...] = tuple(parse_urls(url))
        self.url = ",".join(self.urls)
        self.model_name, self.protocol, self.timeout = model_name, protocol, timeout
        self.on_request = on_request
        self.retry = RetryPolicy(retries=retries, backoff=backoff,
                                 max_backoff=max(backoff, DEFAULT_MAX_BACKOFF))
        self._key_sent = api_key is not None
        key = None if api_key is None else check_key(api_key, "api_key")
        #: The headers (HTTP) or metadata (gRPC) sent on every call.
        self.headers = request_headers(protocol, key, headers)
        self._endpoints = EndpointSet(self.urls, backoff=self.retry.delay)
        self._transport = Transport(protocol, model_name, self.headers, timeout)
        self._loop = RetryLoop(self._endpoints, self.retry, on_unreachable=self._reconnect)
        self._reference = ModelReference(model_name)
        self._reading = threading.Lock()
        self._recorded_concurrency: Optional[int] = None  # from the first model read

    # -- the served model ----------------------------------------------------------------------
    @property
    def served(self) -> ServedInput:
        """What the server says about its input: kind and byte limits
        (:class:`~towhee_rt.client.inputs.ServedInput`); reads the model on first use."""
        return self._model().served

    @property
    def fingerprint(self) -> Optional[str]:
        """The served pipeline's fingerprint: 16 hex characters identifying its operators,
        weights and preprocessing, equal to the local :attr:`towhee_rt.Pipeline.fingerprint`
        of the pipeline it was built from (``None``: a repository built before towhee_rt
        recorded it). Read with the model on first use; every replica must serve the same."""
        return self._model().fingerprint

    @property
    def concurrency(self) -> int:
        """The requests in flight :meth:`infer` and :meth:`stream` keep when a call passes no
        ``concurrency``: the value ``towhee-rt tune`` recorded in the served pipeline (its
        config parameter ``towhee_client_concurrency``, read from the first server that
        answers), else :data:`DEFAULT_CONCURRENCY` (4). Reads the model on first use."""
        self._model()
        return self._recorded_concurrency or DEFAULT_CONCURRENCY

    @property
    def max_batch_size(self) -> Optional[int]:
        """The most items one request may hold (the model's ``max_batch_size``; ``None``: no
        limit said); reads the model on first use."""
        return self._model().max_batch_size

    @property
    def replicas(self) -> Tuple[ReplicaStats, ...]:
        """Each server's state and counts now, in the order given (requests include the model
        reads)."""
        return self._endpoints.stats()

    # -- calls ---------------------------------------------------------------------------------
    def infer(self, items: Sequence[Any], mode: str = "infer", batch_size: int = 1,
              concurrency: Optional[int] = None, errors: str = "raise") -> List[Any]:
        """Results for ``items`` in input order, ``concurrency`` requests in flight.

        ``mode``: ``'infer'`` or ``'async_infer'`` (the same: both send ``concurrency``
        requests at once; ``concurrency=1`` sends one at a time; not given: :attr:`concurrency`,
        the tuned value the served pipeline records, else 4). ``errors='return'`` puts an
        :class:`~towhee_rt.errors.ItemError` in place of each failed item; ``'raise'`` raises
        one :class:`~towhee_rt.errors.PipelineError` holding them all.
        """
        if mode not in ("infer", "async_infer"):
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r} (use .stream() for "
                              "'stream')")
        check_error_mode(errors)
        results: List[Any] = [None] * len(items)
        for index, result in self.stream(items, batch_size=batch_size, concurrency=concurrency):
            results[index] = result
        failed = [r for r in results if isinstance(r, ItemError)]
        if failed and errors == "raise":
            raise PipelineError(failed, results)
        return results

    def stream(self, items: Sequence[Any], batch_size: int = 1,
               concurrency: Optional[int] = None,
               close: bool = False) -> Iterator[Tuple[int, Any]]:
        """Yield ``(index, result or ItemError)`` as results arrive, ``concurrency`` in flight
        (not given: :attr:`concurrency`, the tuned value the served pipeline records, else 4).

        Requests hold ``batch_size`` items, or the model's ``max_batch_size`` when that is
        smaller. Raises :class:`~towhee_rt.errors.ServerUnavailableError` (once, the other
        requests stopped) when the server cannot be reached within the retries. ``close``:
        close the client when done.
        """
        _check_positive(batch_size, "batch_size")
        if concurrency is not None:
            _check_positive(concurrency, "concurrency")
        try:
            model = self._model()
            if concurrency is None:
                concurrency = self.concurrency
            stop = threading.Event()  # set when the call fails: other requests stop retrying
            sender = BatchSender(items, lambda item: model.payload(item, self.timeout),
                                 lambda payloads: self._send(model, payloads, stop),
                                 model.served.max_request_bytes, self.timeout,
                                 lambda index: item_source(items[index], model.served.kind))
            batches = batches_of(len(items), self._request_size(batch_size, model))
            yield from run_concurrently(sender.run, batches, concurrency, stop)
        finally:
            if close:
                self.close()
            else:
                self._transport.connections.close_finished_threads()

    def ready(self) -> bool:
        """Whether a server (with several urls: at least one) and this pipeline's model are
        ready; an unreachable server is not."""
        for url in self.urls:
            try:
                if self._transport.ready(url):
                    return True
            except Exception:  # noqa: BLE001 - an unreachable server is not ready
                self._transport.connections.drop(url)
        return False

    def close(self) -> None:
        """Close every connection this client opened (it opens new ones if used again)."""
        self._transport.connections.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Client(url={self.url!r}, model_name={self.model_name!r}, "
                f"protocol={self.protocol!r})")

    # -- internals -----------------------------------------------------------------------------
    def _model(self) -> ServedModel:
        """The served model, read from the first endpoint that answers on first use."""
        model = self._reference.model
        if model is None:
            with self._reading:
                model = self._reference.model or self._read_model()
        return model

    def _read_model(self) -> ServedModel:
        doing = f"read model {self.model_name!r}"
        try:
            self._loop.run(self._check, time.monotonic() + self.timeout)
        except GaveUp as failure:
            if failure.kind in (BUSY, TIMEOUT):  # reads are not queued behind inferences
                failure = GaveUp(UNAVAILABLE, f"no answer within timeout={self.timeout:g}s "
                                 f"({failure.text})", failure.attempts, failure.seconds)
            raise self._call_error(failure, doing) from None
        return self._reference.model

    def _check(self, endpoint: Endpoint, deadline: float) -> None:
        """Read ``endpoint``'s model: the first read is the reference, any other must match
        it. Transport errors are raised as they are (for the retry loop)."""
        try:
            meta, config = self._transport.read_model(endpoint.url, deadline - time.monotonic())
        except Exception as exc:  # noqa: BLE001 - transport errors go back to the loop
            if classify_error(exc) != OTHER:
                raise
            several = ("; every url of one client must serve this model" if len(self.urls) > 1
                       else "")
            raise ClientError(
                f"cannot read model {self.model_name!r} from the Triton server at {endpoint.url} "
                f"({self.protocol}): {error_text(exc)}. Check the model name (model_name=; "
                f"towhee-rt serve prints the served models) and that the url is the server's "
                f"{self.protocol} endpoint{several}") from None
        first = self._reference.model is None
        self._reference.accept(endpoint.url, meta, config)
        if first:  # the model read on first use (under _reading): its recorded concurrency
            self._recorded_concurrency = served_concurrency(config, self.model_name)
        self._endpoints.mark_checked(endpoint)

    def _send(self, model: ServedModel, payloads: List[Any], stop: threading.Event) -> List[Any]:
        """One request of ``payloads`` through the retry loop, within ``timeout``. Raises the
        call's error (unreachable, refused) or :class:`~towhee_rt.client.retry.GaveUp` for a
        request that failed alone."""
        def attempt(endpoint: Endpoint, deadline: float) -> List[Any]:
            if not endpoint.checked:
                self._check(endpoint, deadline)
            return self._infer_on(endpoint, model, payloads, deadline)

        try:
            return self._loop.run(attempt, time.monotonic() + self.timeout, stop)
        except GaveUp as failure:
            if failure.kind in (BUSY, TIMEOUT, OTHER):
                raise
            raise self._call_error(failure, "send requests") from None

    def _infer_on(self, endpoint: Endpoint, model: ServedModel, payloads: List[Any],
                  deadline: float) -> List[Any]:
        """One inference on ``endpoint``, reported to ``on_request``."""
        start, error = time.perf_counter(), None
        try:
            return self._transport.infer(endpoint.url, model, payloads,
                                         deadline - time.monotonic())
        except Exception as exc:  # noqa: BLE001 - reported, then classified by the loop
            error = exc
            raise
        finally:
            if self.on_request is not None:
                self.on_request(RequestRecord(len(payloads), time.perf_counter() - start, error,
                                              endpoint.url))

    def _reconnect(self, url: str) -> None:
        """``url`` was unreachable: this thread's next call to it opens a fresh connection."""
        self._transport.connections.drop(url)

    def _call_error(self, failure: GaveUp, doing: str) -> ClientError:
        """The one error of a call whose request could not be sent: refused, or unreachable."""
        if failure.kind == REFUSED:
            return refusal_error(failure.text, self.url, self.protocol,
                                 key_sent=self._key_sent) or ClientError(failure.text)
        return ServerUnavailableError(self.url, self.protocol, failure.text, failure.attempts,
                                      failure.seconds, doing, urls=self.urls)

    def _request_size(self, batch_size: int, model: ServedModel) -> int:
        """Items per request: ``batch_size``, at most the model's ``max_batch_size``."""
        limit = model.max_batch_size
        if limit is None or batch_size <= limit:
            return batch_size
        log.info("batch_size=%d is over max_batch_size=%d of model %r at %s: sending requests "
                 "of %d items", batch_size, limit, self.model_name, self.url, limit)
        return limit


def served_concurrency(config: Mapping[str, Any], model_name: str = "") -> Optional[int]:
    """The requests in flight recorded in a model config's (JSON) parameter
    :data:`PARAM_CLIENT_CONCURRENCY` (written by ``towhee-rt tune``); ``None`` when there is
    none. A value that is not an integer from 1 to :data:`MAX_RECORDED_CONCURRENCY` is
    ignored with a warning (the default applies)."""
    text = (((config.get("parameters") or {}).get(PARAM_CLIENT_CONCURRENCY) or {})
            .get("string_value") or "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if 1 <= value <= MAX_RECORDED_CONCURRENCY:
        return value
    log.warning("model %r records %s=%r, not an integer from 1 to %d: ignored, the client "
                "sends %d requests at once unless a call says otherwise", model_name,
                PARAM_CLIENT_CONCURRENCY, text, MAX_RECORDED_CONCURRENCY, DEFAULT_CONCURRENCY)
    return None


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
