"""The ASGI application: OpenAI's embeddings API in front of one served pipeline.

Routes: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{model}`` (these need
``Authorization: Bearer <key>`` when the gateway has a key), and, always open as Triton's own
health and metrics are, ``GET /health`` (200 when Triton and the model are ready, else 503) and
``GET /metrics`` (Prometheus). Every error is answered in OpenAI's error shape.
"""
from __future__ import annotations

import hmac
import time
from typing import Any, Optional

from ._deps import require
from .backend import PipelineBackend
from .body import check_content_length, parse_json, read_limited
from .errors import (AUTHENTICATION, INVALID_REQUEST, RATE_LIMIT, GatewayError, from_exception,
                     from_item_errors)
from .inputs import DEFAULT_MAX_ITEMS, parse_embedding_request
from .metrics import GatewayMetrics
from .responses import TokenCounter, count_usage, embeddings_body, model_card

#: Bodies up to this size when the pipeline does not state its max_request_bytes.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: Embeddings requests answered at once; more are refused with 429.
DEFAULT_MAX_CONCURRENT_REQUESTS = 32
FINGERPRINT_HEADER = "X-Model-Fingerprint"


def create_app(backend: PipelineBackend, *, api_key: Optional[str] = None,
               max_body_bytes: Optional[int] = None, max_items: int = DEFAULT_MAX_ITEMS,
               max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
               token_counter: Optional[TokenCounter] = None,
               fingerprint: Optional[str] = None) -> Any:
    """The Starlette app serving ``backend``'s pipeline under its model name.

    ``api_key``: required as ``Authorization: Bearer <key>`` (compared in constant time).
    ``max_body_bytes``: the largest request body (default: the pipeline's
    ``max_request_bytes``). ``max_items``: inputs per request. ``max_concurrent_requests``:
    embeddings requests in progress at once; more get 429. ``token_counter``: counts
    ``usage`` (see :func:`~towhee_rt.gateway.responses.count_usage`). ``fingerprint``: the
    model's fingerprint, sent as the ``X-Model-Fingerprint`` header and in the model card
    (default: the one the backend read from the served model's config). The app's metrics are
    ``app.state.metrics``.
    """
    applications = require("starlette.applications")
    responses = require("starlette.responses")
    routing = require("starlette.routing")
    anyio = require("anyio")
    JSONResponse, Response = responses.JSONResponse, responses.Response

    model = backend.model_name
    body_limit = max_body_bytes or backend.max_request_bytes or DEFAULT_MAX_BODY_BYTES
    created = int(time.time())
    metrics = GatewayMetrics()
    limiter = anyio.CapacityLimiter(max_concurrent_requests)
    in_flight = [0]  # touched only on the event loop
    if fingerprint is None:
        fingerprint = getattr(backend, "fingerprint", None)
    extra_headers = {FINGERPRINT_HEADER: fingerprint} if fingerprint else {}

    def error_response(error: GatewayError) -> Any:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    def authorize(request: Any) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not given.strip():
            raise GatewayError(401, "missing API key: send the header 'Authorization: Bearer "
                               "<key>' (the OpenAI clients' api_key=)", AUTHENTICATION, None,
                               "missing_api_key", kind="unauthorized", headers=challenge)
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise GatewayError(401, "incorrect API key", AUTHENTICATION, None,
                               "invalid_api_key", kind="unauthorized", headers=challenge)

    def answered(endpoint: str, start: float, response: Any, items: int = 0,
                 error: Optional[GatewayError] = None) -> Any:
        metrics.observe(endpoint, response.status_code, time.perf_counter() - start, items,
                        error.kind if error else "")
        return response

    def embed(items: Any, encoding_format: str) -> Any:
        """Blocking part, in a worker thread: Triton, then the body and usage count."""
        results = backend.embed(items)
        failure = from_item_errors(results)
        if failure is not None:
            raise failure
        return embeddings_body(results, model, encoding_format,
                               count_usage(items, token_counter))

    async def embeddings(request: Any) -> Any:
        start, endpoint = time.perf_counter(), "/v1/embeddings"
        try:
            authorize(request)
            check_content_length(request.headers, body_limit)
            raw = await read_limited(request.stream(), body_limit)
            parsed = parse_embedding_request(
                parse_json(raw), model_name=model, input_kind=backend.input_kind,
                max_items=max_items, max_item_bytes=backend.max_item_bytes)
            del raw
            if in_flight[0] >= max_concurrent_requests:
                raise GatewayError(429, f"the gateway is answering {max_concurrent_requests} "
                                   "requests already; retry later", RATE_LIMIT, None,
                                   "server_busy", kind="busy", headers={"Retry-After": "1"})
            in_flight[0] += 1
            metrics.in_flight.inc()
            try:
                body = await anyio.to_thread.run_sync(embed, parsed.items,
                                                      parsed.encoding_format, limiter=limiter)
            finally:
                in_flight[0] -= 1
                metrics.in_flight.dec()
        except Exception as exc:  # noqa: BLE001 - every failure is answered, details logged
            error = from_exception(exc)
            return answered(endpoint, start, error_response(error), error=error)
        return answered(endpoint, start, JSONResponse(body, headers=extra_headers),
                        items=len(parsed.items))

    async def models(request: Any) -> Any:
        start, endpoint = time.perf_counter(), "/v1/models"
        try:
            authorize(request)
        except GatewayError as error:
            return answered(endpoint, start, error_response(error), error=error)
        return answered(endpoint, start, JSONResponse(
            {"object": "list", "data": [model_card(model, created, fingerprint)]}))

    async def one_model(request: Any) -> Any:
        start, endpoint = time.perf_counter(), "/v1/models/{model}"
        try:
            authorize(request)
            asked = request.path_params["model"]
            if asked != model:
                raise GatewayError(404, f"the model {asked!r} does not exist; this server "
                                   f"serves {model!r}", INVALID_REQUEST, "model",
                                   "model_not_found")
        except GatewayError as error:
            return answered(endpoint, start, error_response(error), error=error)
        return answered(endpoint, start, JSONResponse(model_card(model, created, fingerprint)))

    async def health(request: Any) -> Any:
        try:
            ready = await anyio.to_thread.run_sync(backend.ready, limiter=limiter)
        except Exception:  # noqa: BLE001 - unreachable or refused: not ready
            ready = False
        return JSONResponse({"status": "ready" if ready else "unavailable"},
                            status_code=200 if ready else 503)

    async def prometheus(request: Any) -> Any:
        payload, content_type = metrics.exposition()
        return Response(payload, media_type=content_type)

    async def not_found(request: Any, exc: Any) -> Any:
        status = getattr(exc, "status_code", 404)
        error = GatewayError(status, f"{request.method} {request.url.path}: "
                             f"{'no such route' if status == 404 else 'not allowed'}; this "
                             "server answers POST /v1/embeddings and GET /v1/models",
                             INVALID_REQUEST, None,
                             "not_found" if status == 404 else "method_not_allowed")
        return error_response(error)

    async def server_error(request: Any, exc: Exception) -> Any:
        return error_response(from_exception(exc))

    app = applications.Starlette(
        routes=[routing.Route("/v1/embeddings", embeddings, methods=["POST"]),
                routing.Route("/v1/models", models, methods=["GET"]),
                routing.Route("/v1/models/{model:path}", one_model, methods=["GET"]),
                routing.Route("/health", health, methods=["GET"]),
                routing.Route("/metrics", prometheus, methods=["GET"])],
        exception_handlers={404: not_found, 405: not_found, Exception: server_error})
    app.state.metrics = metrics
    app.state.backend = backend
    app.state.max_body_bytes = body_limit
    return app
