"""The served pipeline behind the gateway, reached with towhee_rt's own client over gRPC.

The gateway never runs a model: it sends items to Triton with :class:`towhee_rt.Client`
(deadlines, retries, per-item errors) and reads what the served pipeline takes from the
model's config (input kind, byte limits, ``max_batch_size``) and its fingerprint.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Union

from ..errors import ConfigError
from .inputs import TEXT_KIND


class PipelineBackend:
    """Embeds items with the pipeline served as ``model_name`` by the Triton server at
    ``grpc_url``. Blocking; safe to call from several threads at once.

    ``api_key`` is sent to Triton (the server's inference key); ``timeout`` bounds each request
    to Triton, retries included; ``concurrency`` is the number of requests one call keeps in
    flight when its items need several (``None``: the client's, i.e. what ``towhee-rt tune``
    recorded in the served pipeline, else 4). ``input_kind`` overrides what the model's config says
    (``'text'``, ``'image'``): repositories built before towhee_rt recorded it say nothing.
    """

    def __init__(self, grpc_url: str, model_name: str = "pipeline", *,
                 api_key: Optional[str] = None, timeout: float = 60.0,
                 concurrency: Optional[int] = None,
                 input_kind: Optional[str] = None, client: Any = None):
        if client is None:
            from ..client import Client

            client = Client(grpc_url, model_name=model_name, protocol="grpc", timeout=timeout,
                            api_key=api_key)
        self.client = client
        self.model_name = model_name
        served = client.served  # reads the model: the client's concurrency is known after it
        self.concurrency: int = concurrency or client.concurrency
        self.input_kind = input_kind or served.kind
        if self.input_kind is None:
            raise ConfigError(
                f"model {model_name!r} does not say what input it takes (built by an older "
                "towhee_rt): rebuild the repository, or pass input_kind='text' or 'image'")
        #: Bytes one request / one item may carry; ``None``: the model does not say.
        self.max_request_bytes: Optional[int] = served.max_request_bytes
        self.max_item_bytes: Optional[int] = served.max_item_bytes
        #: The most items one request to Triton holds (``None``: no batching).
        self.max_batch_size: Optional[int] = client.max_batch_size
        #: The served pipeline's fingerprint (``None``: its repository does not record one),
        #: from the model's config: whatever server serves it.
        self.fingerprint: Optional[str] = getattr(client, "fingerprint", None)

    def embed(self, items: Sequence[Union[str, bytes]]) -> List[Any]:
        """One result per item, in order, with an :class:`~towhee_rt.errors.ItemError` in
        place of each failed item. Text is sent as UTF-8 bytes, images as their bytes: the
        client never reads an item as a path or a URL. Raises
        :class:`~towhee_rt.errors.ServerUnavailableError` / ``ClientError`` for the call."""
        payloads = [item.encode("utf-8") if isinstance(item, str) else item
                    for item in items]
        batch = self.max_batch_size or 1
        requests = math.ceil(len(payloads) / batch)
        # One request: send it from this thread, reusing its connection.
        workers = max(1, min(self.concurrency, requests))
        return self.client.infer(payloads, mode="async_infer" if workers > 1 else "infer",
                                 batch_size=batch, concurrency=workers, errors="return")

    @property
    def is_text(self) -> bool:
        return self.input_kind == TEXT_KIND

    def ready(self) -> bool:
        """Whether Triton and the model are ready."""
        return bool(self.client.ready())

    def close(self) -> None:
        """Close the connections to Triton."""
        self.client.close()
