"""``dc([...])``: a list of items with an operator chain, run locally or on a served pipeline.

Example::

    import towhee_rt as towhee
    vecs = towhee.dc(['a.jpg', 'b.jpg']).image_decode.cv2_rgb() \\
        .image_embedding.timm(model_name='test_resnet').to_list()
    vecs = towhee.dc(['a.jpg']).remote(url='127.0.0.1:8001', mode='infer', protocol='grpc')
    vecs.to_milvus('photos.db', 'photos')        # see towhee_rt.milvus

``to_list()`` (with a chain) and ``remote()`` return :class:`Results`: a list of results in
input order that also knows its items and the pipeline's fingerprint, for
:meth:`Results.to_milvus` and :meth:`Results.search_milvus`.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from .client import Client
from .client.retry import DEFAULT_BACKOFF, DEFAULT_RETRIES
from .errors import ConfigError
from .pipeline import Pipeline, PipelineBuilder
from .results import Results


class DataCollection:
    """Items plus an (optional) operator chain; nothing runs until ``to_list`` or ``remote``."""

    def __init__(self, items: Iterable[Any], builder: Optional[PipelineBuilder] = None):
        self._items = list(items)
        self._builder = builder or PipelineBuilder()
        self._pipe: Optional[Pipeline] = None  # built on the first to_list, then reused

    def pipeline_config(self, **values: Any) -> "DataCollection":
        """Same as :meth:`PipelineBuilder.pipeline_config`."""
        return DataCollection(self._items, self._builder.pipeline_config(**values))

    def __getattr__(self, namespace: str) -> "_DCNamespace":
        if namespace.startswith("_"):
            raise AttributeError(namespace)
        return _DCNamespace(self._items, getattr(self._builder, namespace))

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def to_list(self, errors: str = "raise") -> List[Any]:
        """Run the chain locally over the items (the items themselves if there is no chain):
        :class:`Results`, which carry the pipeline's fingerprint."""
        if not self._builder.steps:
            return list(self._items)
        if self._pipe is None:
            self._pipe = self._builder.as_function()
        try:
            return self._pipe.batch(self._items, errors=errors)
        finally:
            self._pipe.close()

    def to_milvus(self, uri: Any, collection: str, ids: Optional[Sequence[Any]] = None, *,
                  metric: Optional[str] = None, token: Optional[str] = None):
        """Run the chain locally (failed items skipped and reported) and insert the vectors
        into Milvus: see :meth:`Results.to_milvus`."""
        return self._vectors("to_milvus").to_milvus(uri, collection, ids, metric=metric,
                                                    token=token)

    def search_milvus(self, uri: Any, collection: str, limit: int = 5, *,
                      token: Optional[str] = None) -> List[Any]:
        """Run the chain locally and search Milvus with the vectors: see
        :meth:`Results.search_milvus`."""
        return self._vectors("search_milvus").search_milvus(uri, collection, limit,
                                                            token=token)

    def _vectors(self, doing: str) -> Results:
        if not self._builder.steps:
            raise ConfigError(f"{doing}() needs vectors: add the pipeline's operators to the "
                              f"chain (dc(items).text_embedding...().{doing}(...)), or send "
                              f"the items to a served pipeline first (.remote(...).{doing}(...))")
        return self.to_list(errors="return")

    def remote(self, url: Union[str, Sequence[str]] = "127.0.0.1:8001", mode: str = "infer",
               protocol: str = "grpc", model_name: str = "pipeline", batch_size: int = 1,
               concurrency: Optional[int] = None,
               errors: str = "raise", timeout: float = 60.0, api_key: Optional[str] = None,
               headers: Optional[Mapping[str, str]] = None, retries: int = DEFAULT_RETRIES,
               backoff: float = DEFAULT_BACKOFF):
        """Send the items to a pipeline served by tritonserver and return results in order.

        ``mode``: ``'infer'`` or ``'async_infer'`` (the same: :class:`Results` in input order,
        with ``concurrency`` requests in flight; ``concurrency=1`` sends one at a time;
        ``.to_milvus(...)`` indexes them), or ``'stream'`` (an iterator of ``(index, result)``
        as results arrive). ``concurrency`` not given: the requests in flight that
        ``towhee-rt tune`` chose and recorded in the served pipeline, else 4 (see
        :attr:`Client.concurrency <towhee_rt.client.Client.concurrency>`); given, it wins. A text
        pipeline gets strings as they are; an image pipeline gets bytes (local files read,
        URLs downloaded here within ``timeout``), items over the server's byte limits failing
        here. ``errors='return'`` puts an :class:`~towhee_rt.errors.ItemError` in place of
        each failed item. ``api_key``: the
        key the server was started with; ``headers``: more headers for every call (see
        :class:`~towhee_rt.client.Client`).

        ``batch_size`` items go in one request, at most the served model's
        ``max_batch_size``. ``timeout`` (seconds) bounds each request with its retries and
        travels with it: the server drops a request still queued when it passes. An
        unreachable server is retried ``retries`` times (waits from ``backoff`` s, doubling,
        with jitter), then one :class:`~towhee_rt.errors.ServerUnavailableError` is raised;
        items whose request a busy server turned away (after one retry) or that timed out
        fail as :class:`~towhee_rt.errors.ServerBusyError` /
        :class:`~towhee_rt.errors.DeadlineExceededError`.

        ``url``: several replicas of the pipeline (a list or tuple of ``"host:port"``, or one
        string with commas) share the requests, least busy first; an unreachable replica is
        taken out and its requests sent to the others (see
        :class:`~towhee_rt.client.Client`).
        """
        if self._builder.steps:
            raise ConfigError("remote() sends items to the pipeline already served by "
                              "tritonserver; drop the operator chain before .remote(...)")
        client = Client(url, model_name=model_name, protocol=protocol, timeout=timeout,
                        api_key=api_key, headers=headers, retries=retries, backoff=backoff)
        if mode == "stream":
            return client.stream(self._items, batch_size=batch_size, concurrency=concurrency,
                                 close=True)
        try:
            results = client.infer(self._items, mode=mode, batch_size=batch_size,
                                   concurrency=concurrency, errors=errors)
            return Results(results, self._items, client.fingerprint)
        finally:
            client.close()


class _DCNamespace:
    def __init__(self, items: List[Any], namespace):
        self._items, self._namespace = items, namespace

    def __getattr__(self, name: str):
        add = getattr(self._namespace, name)

        def add_to_collection(op_config=None, **params: Any) -> DataCollection:
            return DataCollection(self._items, add(op_config=op_config, **params))

        return add_to_collection


def dc(items: Iterable[Any]) -> DataCollection:
    """Wrap ``items`` (paths, URLs, bytes or strings) in a :class:`DataCollection`."""
    return DataCollection(items)
