"""The bodies the gateway answers with: embeddings, model lists and usage counts.

Embeddings are float32. ``encoding_format='float'`` gives JSON numbers (each the exact float32
value); ``'base64'`` gives the little-endian float32 bytes in base64, as OpenAI does.

What ``usage`` counts (``prompt_tokens`` = ``total_tokens``): with a ``token_counter`` (e.g.
the served model's tokenizer), what it returns; otherwise whitespace-separated words for text
pipelines and one per image for image pipelines.
"""
from __future__ import annotations

import base64
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .errors import SERVER, GatewayError

#: Counts the tokens of each item of a request (texts or image bytes).
TokenCounter = Callable[[Sequence[Union[str, bytes]]], Sequence[int]]


def count_usage(items: Sequence[Union[str, bytes]],
                token_counter: Optional[TokenCounter] = None) -> int:
    """``prompt_tokens`` of a request: ``token_counter``'s counts summed, else words of text
    (split on whitespace) and one per image."""
    if token_counter is not None:
        return int(sum(token_counter(items)))
    return sum(len(item.split()) if isinstance(item, str) else 1 for item in items)


def embedding_vector(result: Any, index: int) -> np.ndarray:
    """One pipeline result as a flat float32 vector; a pipeline whose result is not one
    vector cannot be served as embeddings (500, logged by the caller)."""
    if isinstance(result, dict) or not hasattr(result, "shape"):
        raise GatewayError(500, f"input[{index}]: the pipeline does not return one embedding "
                           "vector per item, so it cannot be served as OpenAI embeddings",
                           SERVER, None, "not_an_embedding", kind="internal")
    return np.asarray(result, dtype=np.float32).reshape(-1)


def encode_embedding(vector: np.ndarray, encoding_format: str) -> Union[List[float], str]:
    """``vector`` as JSON numbers (``'float'``) or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32).tolist()


def embeddings_body(results: Sequence[Any], model: str, encoding_format: str,
                    prompt_tokens: int) -> Dict[str, Any]:
    """The body of a successful ``POST /v1/embeddings``."""
    data = [{"object": "embedding", "index": i,
             "embedding": encode_embedding(embedding_vector(r, i), encoding_format)}
            for i, r in enumerate(results)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def model_card(model: str, created: int, fingerprint: Optional[str] = None) -> Dict[str, Any]:
    """One entry of ``GET /v1/models`` (and the body of ``GET /v1/models/{model}``)."""
    card: Dict[str, Any] = {"id": model, "object": "model", "created": created,
                            "owned_by": "towhee_rt"}
    if fingerprint is not None:
        card["fingerprint"] = fingerprint
    return card
