"""The gateway's Prometheus metrics, in a registry of its own (several gateways may share a
process), exposed at ``GET /metrics`` beside Triton's own metrics endpoint."""
from __future__ import annotations

from typing import Tuple

from ._deps import require

#: Latency buckets (seconds), from a cached small text to a large image batch.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    """Counters and a latency histogram, labelled by endpoint, HTTP status and error kind.

    * ``towhee_rt_gateway_requests_total{endpoint, status}``
    * ``towhee_rt_gateway_items_total{endpoint}``: inputs embedded successfully
    * ``towhee_rt_gateway_request_seconds{endpoint}``: histogram of request latency
    * ``towhee_rt_gateway_errors_total{endpoint, kind}``: kind is the error's code or item kind
      (``invalid_input``, ``unauthorized``, ``request_too_large``, ``busy``, ...)
    * ``towhee_rt_gateway_requests_in_flight``
    """

    def __init__(self) -> None:
        prom = require("prometheus_client")
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.requests = prom.Counter("towhee_rt_gateway_requests", "HTTP requests answered",
                                     ("endpoint", "status"), registry=self.registry)
        self.items = prom.Counter("towhee_rt_gateway_items", "Inputs embedded",
                                  ("endpoint",), registry=self.registry)
        self.latency = prom.Histogram("towhee_rt_gateway_request_seconds",
                                      "Request latency in seconds", ("endpoint",),
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = prom.Counter("towhee_rt_gateway_errors", "Error answers by kind",
                                   ("endpoint", "kind"), registry=self.registry)
        self.in_flight = prom.Gauge("towhee_rt_gateway_requests_in_flight",
                                    "Embeddings requests being answered",
                                    registry=self.registry)

    def observe(self, endpoint: str, status: int, seconds: float, items: int = 0,
                error_kind: str = "") -> None:
        """Record one answered request."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if items:
            self.items.labels(endpoint).inc(items)
        if error_kind:
            self.errors.labels(endpoint, error_kind).inc()

    def exposition(self) -> Tuple[bytes, str]:
        """The text exposition and its content type."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
