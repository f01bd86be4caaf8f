"""An OpenAI-compatible embeddings endpoint in front of a pipeline served on Triton.

``POST /v1/embeddings`` and ``GET /v1/models`` answer as OpenAI's API does, so the ``openai``
and ``langchain-openai`` clients (and curl) can query a served pipeline; requests go on to
Triton over gRPC through :class:`towhee_rt.Client`. See ``docs/openai.md``.

Example::

    from towhee_rt.gateway import start_gateway
    with start_gateway(server.grpc_url, model_name="pipeline") as gateway:
        print(gateway.url + "/v1")

Needs the ``openai`` extra (``pip install 'towhee_rt[openai]'``: Starlette, uvicorn,
prometheus-client), imported only when a gateway is built.

Modules: :mod:`.server` (start/stop), :mod:`.app` (the ASGI app), :mod:`.inputs` (request
parsing and image decoding), :mod:`.body` (size-limited body reading), :mod:`.responses`
(response bodies, usage), :mod:`.errors` (OpenAI's error shape and the mapping from towhee_rt's
errors), :mod:`.backend` (the served pipeline, through towhee_rt's client), :mod:`.metrics`.
"""
from __future__ import annotations

from typing import Any

__all__ = ["start_gateway", "Gateway", "create_app", "PipelineBackend", "INSTALL_HINT"]

from ._deps import INSTALL_HINT


def __getattr__(name: str) -> Any:
    # The web stack is imported only when a gateway is built.
    if name in ("start_gateway", "Gateway"):
        from . import server

        return getattr(server, name)
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "PipelineBackend":
        from .backend import PipelineBackend

        return PipelineBackend
    raise AttributeError(f"module 'towhee_rt.gateway' has no attribute {name!r}")
