"""Vectors into Milvus and nearest items back, with the pipeline's fingerprint as the guard.

Example (Milvus Lite: a local file, no server; ``pip install 'towhee_rt[milvus]'``)::

    import towhee_rt as towhee
    from towhee_rt import milvus
    report = towhee.dc(paths).remote(url=server.grpc_url, errors='return') \\
                   .to_milvus('photos.db', 'photos')
    hits = towhee.dc([query]).remote(url=server.grpc_url).search_milvus('photos.db', 'photos')
    hits[0]   # [('a.jpg', 0.98), ('b.jpg', 0.41), ...]: (id, score), nearest first

A collection made here has a ``VARCHAR`` primary key ``id`` (the item's path or text as given,
else its index; or the ``ids=`` you pass), a ``FLOAT_VECTOR`` field ``vector`` of the vectors'
dimension, an ``AUTOINDEX`` index with the ``metric`` (``'COSINE'`` by default; ``'IP'``,
``'L2'``), and the pipeline's fingerprint as the collection property ``towhee_fingerprint``.
Vectors are inserted with ``upsert`` (indexing an item again replaces it) only into a
collection of the same fingerprint: vectors of another pipeline (other weights, preprocessing
or format) cannot be compared with the ones in it, and are refused with a
:class:`~towhee_rt.errors.ConfigError` naming both fingerprints. Items that failed
(:class:`~towhee_rt.errors.ItemError`) are skipped and reported, never inserted.

``uri`` is what ``pymilvus.MilvusClient`` takes: a local ``*.db`` file (Milvus Lite), or a
server's ``http://host:19530`` (``token=`` for its credentials); an open ``MilvusClient`` is
used as it is (and left open).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ConfigError, ItemError

__all__ = ["INSTALL_HINT", "InsertReport", "collection_fingerprint", "insert", "search",
           "source_id"]

INSTALL_HINT = "pip install 'towhee_rt[milvus]'"
#: The collection property that records the fingerprint of the vectors in it.
FINGERPRINT_PROPERTY = "towhee_fingerprint"
ID_FIELD, VECTOR_FIELD = "id", "vector"
#: The longest id (bytes of UTF-8): Milvus' VARCHAR limit.
MAX_ID_BYTES = 65535
METRICS = ("COSINE", "IP", "L2")
DEFAULT_METRIC = "COSINE"
#: Rows per upsert call.
INSERT_BATCH = 512
log = logging.getLogger(__name__)

#: One search hit: the item's id and its score (COSINE, IP: higher is nearer; L2: lower).
Hit = Tuple[str, float]


@dataclasses.dataclass
class InsertReport:
    """What :func:`insert` did."""

    collection: str
    fingerprint: str
    #: The ids inserted (or replaced), in input order.
    inserted: List[str]
    #: ``(id, error)`` of each item that failed in the pipeline, not inserted.
    skipped: List[Tuple[str, ItemError]]
    #: Whether the collection was created by this call.
    created: bool = False

    def __str__(self) -> str:
        text = (f"{len(self.inserted)} vectors into {self.collection!r} (fingerprint "
                f"{self.fingerprint}{', created' if self.created else ''})")
        if self.skipped:
            text += f"; {len(self.skipped)} failed items skipped: " + "; ".join(
                f"{item_id}: {error}" for item_id, error in self.skipped)
        return text


def source_id(item: Any, index: int) -> str:
    """An item's id in a collection: a path or text as given (``str``/``PathLike``), else
    its index in the input list (bytes, arrays)."""
    if isinstance(item, os.PathLike):
        return os.fspath(item)
    if isinstance(item, str):
        return item
    return str(index)


def insert(uri: Any, collection: str, vectors: Sequence[Any], ids: Sequence[Any],
           fingerprint: str, *, metric: Optional[str] = None, token: Optional[str] = None
           ) -> InsertReport:
    """Upsert ``vectors`` (one per item; an :class:`~towhee_rt.errors.ItemError` in place of
    a failed item is skipped and reported) with their ``ids`` into ``collection``, creating it
    (dimension from the vectors, ``metric``: ``'COSINE'`` by default) when absent.

    Raises :class:`~towhee_rt.errors.ConfigError` when the collection holds vectors of another
    fingerprint, was not made by towhee_rt, has another dimension or metric, or when the ids
    are not one per vector and unique.
    """
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ConfigError(
            "these vectors carry no fingerprint (they come from a repository built before "
            "towhee_rt recorded one, or from a plain list): rebuild the repository with "
            "towhee_rt.build_model_repo and serve it again, or pass the pipeline's "
            "fingerprint= (pipe.fingerprint)")
    if metric is not None and metric.upper() not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    ids = [str(i) for i in ids]
    if len(ids) != len(vectors):
        raise ConfigError(f"ids= must hold one id per item: {len(ids)} ids for "
                          f"{len(vectors)} items")
    _check_ids(ids)
    rows, skipped = [], []
    for item_id, vector in zip(ids, vectors):
        if isinstance(vector, ItemError):
            skipped.append((item_id, vector))
        else:
            rows.append({ID_FIELD: item_id, VECTOR_FIELD: _vector(vector, item_id).tolist()})
    if skipped:
        log.warning("%d failed items not inserted into %r: %s", len(skipped), collection,
                    "; ".join(f"{i}: {e}" for i, e in skipped))
    dims = {len(row[VECTOR_FIELD]) for row in rows}
    if len(dims) > 1:
        raise ConfigError(f"the vectors have different dimensions {sorted(dims)}: one "
                          "collection holds vectors of one pipeline")
    client, owned = _connect(uri, token)
    try:
        created = False
        if client.has_collection(collection):
            _check_collection(client, collection, fingerprint, dims, metric)
        elif rows:
            _create(client, collection, dims.pop(), (metric or DEFAULT_METRIC).upper(),
                    fingerprint)
            created = True
        for start in range(0, len(rows), INSERT_BATCH):
            client.upsert(collection, rows[start:start + INSERT_BATCH])
    finally:
        if owned:
            client.close()
    return InsertReport(collection, fingerprint, [row[ID_FIELD] for row in rows], skipped,
                        created)


def search(uri: Any, collection: str, vectors: Any, limit: int = 5, *,
           fingerprint: Optional[str] = None, token: Optional[str] = None
           ) -> Union[List[Hit], List[Union[List[Hit], ItemError]]]:
    """The ``limit`` nearest items of ``collection`` as ``(id, score)``, nearest first.

    ``vectors``: one vector (a 1-D array or list of numbers; the answer is one list of hits)
    or several (a list of them, a 2-D array; the answer is a list of lists, an
    :class:`~towhee_rt.errors.ItemError` in place of a failed item kept as it is). With
    ``fingerprint`` (the query vectors' pipeline), a collection of another fingerprint is
    refused with a :class:`~towhee_rt.errors.ConfigError`.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    single = _is_one_vector(vectors)
    queries = [vectors] if single else list(vectors)
    client, owned = _connect(uri, token)
    try:
        if not client.has_collection(collection):
            raise ConfigError(f"Milvus has no collection {collection!r} at {_where(uri)}: "
                              "insert vectors first (to_milvus)")
        stored = _fingerprint_of(client, collection)
        if fingerprint and stored != fingerprint:
            raise ConfigError(_mismatch(collection, stored, fingerprint, "search"))
        wanted = [(k, _vector(q, str(k)).tolist()) for k, q in enumerate(queries)
                  if not isinstance(q, ItemError)]
        answers = client.search(collection, [v for _, v in wanted], limit=limit,
                                output_fields=[ID_FIELD]) if wanted else []
    finally:
        if owned:
            client.close()
    results: List[Any] = list(queries)
    for (k, _), hits in zip(wanted, answers):
        results[k] = [(str(hit.get("id", hit.get("entity", {}).get(ID_FIELD))),
                       float(hit["distance"])) for hit in hits]
    return results[0] if single else results


def collection_fingerprint(uri: Any, collection: str, token: Optional[str] = None
                           ) -> Optional[str]:
    """The fingerprint recorded on ``collection`` (``None``: none recorded)."""
    client, owned = _connect(uri, token)
    try:
        return _fingerprint_of(client, collection)
    finally:
        if owned:
            client.close()


# -- internals ---------------------------------------------------------------------------------
def _pymilvus():
    try:
        return importlib.import_module("pymilvus")
    except ImportError as exc:
        raise ImportError(f"towhee_rt.milvus needs pymilvus, which is not installed ({exc}); "
                          f"install it with: {INSTALL_HINT}") from exc


def _connect(uri: Any, token: Optional[str]):
    """``(client, owned)``: a new ``MilvusClient`` for a uri string (closed by the caller), or
    the client given."""
    if not isinstance(uri, (str, os.PathLike)):
        return uri, False
    pymilvus = _pymilvus()
    kwargs = {"token": token} if token else {}
    try:
        return pymilvus.MilvusClient(os.fspath(uri), **kwargs), True
    except Exception as exc:  # noqa: BLE001 - pymilvus' own errors say what is missing
        hint = (f"; a local file uri needs milvus-lite: {INSTALL_HINT}"
                if "milvus-lite" in str(exc) or "milvus_lite" in str(exc) else "")
        raise ConfigError(f"cannot open Milvus at {os.fspath(uri)!r}: {exc}{hint}") from None


def _where(uri: Any) -> str:
    return os.fspath(uri) if isinstance(uri, (str, os.PathLike)) else "the given client"


def _create(client, collection: str, dim: int, metric: str, fingerprint: str) -> None:
    pymilvus = _pymilvus()
    schema = pymilvus.MilvusClient.create_schema(
        auto_id=False, enable_dynamic_field=False,
        description=f"towhee_rt vectors, fingerprint {fingerprint}")
    schema.add_field(ID_FIELD, pymilvus.DataType.VARCHAR, is_primary=True,
                     max_length=MAX_ID_BYTES)
    schema.add_field(VECTOR_FIELD, pymilvus.DataType.FLOAT_VECTOR, dim=dim)
    index = client.prepare_index_params()
    index.add_index(VECTOR_FIELD, index_type="AUTOINDEX", metric_type=metric)
    client.create_collection(collection, schema=schema, index_params=index,
                             properties={FINGERPRINT_PROPERTY: fingerprint})


def _fingerprint_of(client, collection: str) -> Optional[str]:
    properties = client.describe_collection(collection).get("properties") or {}
    return properties.get(FINGERPRINT_PROPERTY) or None


def _check_collection(client, collection: str, fingerprint: str, dims, metric) -> None:
    stored = _fingerprint_of(client, collection)
    if stored is None:
        raise ConfigError(
            f"collection {collection!r} was not made by towhee_rt (it records no "
            f"{FINGERPRINT_PROPERTY!r}), so what its vectors mean is unknown: insert into a "
            "new collection name")
    if stored != fingerprint:
        raise ConfigError(_mismatch(collection, stored, fingerprint, "insert"))
    fields = {f["name"]: f for f in client.describe_collection(collection)["fields"]}
    dim = int((fields.get(VECTOR_FIELD) or {}).get("params", {}).get("dim", 0))
    if dims and dim not in dims:
        raise ConfigError(f"collection {collection!r} holds {dim}-d vectors, these are "
                          f"{dims.pop()}-d")
    if metric is not None:
        used = client.describe_index(collection, VECTOR_FIELD).get("metric_type")
        if used and used.upper() != metric.upper():
            raise ConfigError(f"collection {collection!r} is indexed with metric {used}, not "
                              f"{metric.upper()}: drop metric= or use a new collection")


def _mismatch(collection: str, stored: Optional[str], fingerprint: str, doing: str) -> str:
    return (f"collection {collection!r} holds vectors of pipeline fingerprint {stored}, these "
            f"are of fingerprint {fingerprint}: they come from other weights, preprocessing or "
            f"model format and cannot be compared with them, so they are not {doing}ed. Use "
            f"the pipeline that filled {collection!r} (the one whose pipe.fingerprint / "
            f"client.fingerprint is {stored}), or index everything again with this one into a "
            "new collection (or after dropping this one)")


def _check_ids(ids: List[str]) -> None:
    seen = set()
    for item_id in ids:
        if not item_id or len(item_id.encode("utf-8")) > MAX_ID_BYTES:
            raise ConfigError(f"id {item_id[:40]!r}... must be 1..{MAX_ID_BYTES} bytes: pass "
                              "ids= (e.g. a name or number per item)")
        if item_id in seen:
            raise ConfigError(f"id {item_id[:80]!r} is given twice: pass ids= with one unique "
                              "id per item")
        seen.add(item_id)


def _vector(value: Any, item_id: str) -> np.ndarray:
    """One item's result as a float32 vector."""
    if isinstance(value, (dict, tuple)):
        raise ConfigError(f"item {item_id!r}: the pipeline returns several outputs; Milvus "
                          "takes one vector per item (end the pipeline with the embedding)")
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 1:
        array = array.squeeze()
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(f"item {item_id!r}: expected one vector, got an array of shape "
                          f"{np.shape(value)}")
    return array


def _is_one_vector(value: Any) -> bool:
    if isinstance(value, ItemError):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(v, (int, float, np.number)) for v in value))
