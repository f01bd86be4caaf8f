"""Results that know where they came from: one per item, the items, the pipeline's fingerprint.

``pipe(list)``, ``dc(items)...to_list()`` and ``dc(items).remote(...)`` return :class:`Results`,
a plain list with two attributes, so that its vectors can go into Milvus (:meth:`to_milvus`)
or search it (:meth:`search_milvus`) under their items' ids and with their pipeline's
fingerprint checked (:mod:`towhee_rt.milvus`).
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence

__all__ = ["Results"]


class Results(list):
    """One result per item, in input order (an :class:`~towhee_rt.errors.ItemError` in place
    of each failed item with ``errors='return'``): a plain list that also holds the ``items``
    it came from and the ``fingerprint`` of the pipeline that computed it."""

    def __init__(self, results: Iterable[Any], items: Sequence[Any],
                 fingerprint: Optional[str]):
        super().__init__(results)
        #: The items, as given to :func:`dc`.
        self.items = list(items)
        #: The pipeline's fingerprint (:attr:`towhee_rt.Pipeline.fingerprint`,
        #: :attr:`towhee_rt.Client.fingerprint`); ``None`` when the server does not say.
        self.fingerprint = fingerprint

    def to_milvus(self, uri: Any, collection: str, ids: Optional[Sequence[Any]] = None, *,
                  metric: Optional[str] = None, token: Optional[str] = None):
        """Insert the vectors into Milvus collection ``collection`` at ``uri`` (a local
        ``*.db`` file for Milvus Lite, or a server's URL), each under its item's id: the path
        or text as given, else its index; or ``ids`` (one per item). Creates the collection
        (``metric``: ``'COSINE'`` by default) when absent; refuses, with a
        :class:`~towhee_rt.errors.ConfigError`, a collection that holds vectors of another
        fingerprint. Failed items are skipped and reported. Returns a
        :class:`towhee_rt.milvus.InsertReport`. Needs ``pip install 'towhee_rt[milvus]'``."""
        from . import milvus

        if ids is None:
            ids = [milvus.source_id(item, k) for k, item in enumerate(self.items)]
        return milvus.insert(uri, collection, list(self), ids, self.fingerprint,
                             metric=metric, token=token)

    def search_milvus(self, uri: Any, collection: str, limit: int = 5, *,
                      token: Optional[str] = None) -> List[Any]:
        """For each item, its ``limit`` nearest items in ``collection`` as ``(id, score)``,
        nearest first (an :class:`~towhee_rt.errors.ItemError` stays in place of a failed
        item). A collection of another fingerprint is refused (see :meth:`to_milvus`)."""
        from . import milvus

        return milvus.search(uri, collection, list(self), limit=limit,
                             fingerprint=self.fingerprint, token=token)
