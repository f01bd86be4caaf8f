"""The served model a client talks to, and the rule that every endpoint serves the same one.

:class:`ServedModel` is what the client needs from a model's metadata and config (inputs,
outputs, input kind and byte limits, ``max_batch_size``). :class:`ModelReference` keeps the
first one read and compares every other endpoint's with it: replicas serving different models
(inputs, outputs, ``max_batch_size``, input kind or fingerprint: other weights or
preprocessing) behind one client are a roll-out accident, refused with a
:class:`~towhee_rt.errors.ClientError`.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..backends.wire import PARAM_FINGERPRINT
from ..errors import ClientError
from .inputs import ServedInput, encode_item, max_batch_size, served_input

__all__ = ["ModelReference", "ServedModel", "model_signature", "served_fingerprint",
           "signature_changes"]


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A served pipeline as the client sees it (from its metadata and config, JSON)."""

    #: The model's inputs as its metadata lists them (``name``, ``datatype``, ``shape``).
    inputs: Tuple[Mapping[str, Any], ...]
    #: The names of its outputs.
    outputs: Tuple[str, ...]
    #: What its config says about its input (kind and byte limits).
    served: ServedInput
    #: The most items one request may hold (``None``: no limit said).
    max_batch_size: Optional[int]
    #: The pipeline's fingerprint (``None``: built before towhee_rt recorded it).
    fingerprint: Optional[str] = None

    @classmethod
    def read(cls, meta: Mapping[str, Any], config: Mapping[str, Any]) -> "ServedModel":
        """The model described by its metadata and config, as tritonclient returns them."""
        return cls(tuple(meta["inputs"]), tuple(o["name"] for o in meta["outputs"]),
                   served_input(config), max_batch_size(config), served_fingerprint(config))

    def payload(self, item: Any, timeout: float) -> Any:
        """What is sent for ``item``: encoded bytes for a pipeline that takes bytes (see
        :func:`~towhee_rt.client.inputs.encode_item`), else the item as an array."""
        if not self.inputs or self.inputs[0]["datatype"] != "BYTES":
            return np.asarray(item)
        return encode_item(item, self.served, timeout=timeout)


def served_fingerprint(config: Mapping[str, Any]) -> Optional[str]:
    """The pipeline's fingerprint from a model config's (JSON) parameters; ``None`` when it
    does not say (repositories built before towhee_rt recorded it)."""
    value = ((config.get("parameters") or {}).get(PARAM_FINGERPRINT) or {}).get("string_value")
    return str(value or "").strip() or None


def model_signature(meta: Mapping[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """What must be the same on every replica behind one client: the model's inputs and
    outputs (name, datatype, shape), ``max_batch_size``, towhee_rt's input kind and the
    pipeline's fingerprint (the same weights and preprocessing), from its metadata and config
    (JSON, as tritonclient returns them)."""
    def tensors(specs) -> List[Tuple[str, str, Tuple[str, ...]]]:
        return [(s["name"], s["datatype"], tuple(str(d) for d in s.get("shape", ())))
                for s in specs]

    return {"inputs": tensors(meta.get("inputs", ())), "outputs": tensors(meta.get("outputs", ())),
            "max_batch_size": max_batch_size(config), "input kind": served_input(config).kind,
            "fingerprint": served_fingerprint(config)}


def signature_changes(reference: Mapping[str, Any], other: Mapping[str, Any]) -> List[str]:
    """``"name: reference value != other value"`` for each part of two
    :func:`model_signature` that differs (empty: same model)."""
    return [f"{name}: {reference.get(name)!r} != {other.get(name)!r}"
            for name in sorted(reference.keys() | other.keys())
            if reference.get(name) != other.get(name)]


class ModelReference:
    """The model ``model_name`` as first read from one endpoint; every other endpoint's is
    compared with it (:meth:`accept`). Thread-safe."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self._first: Optional[Tuple[str, Dict[str, Any], ServedModel]] = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Optional[ServedModel]:
        """The model read first; ``None`` before any endpoint was read."""
        first = self._first
        return None if first is None else first[2]

    def accept(self, url: str, meta: Mapping[str, Any], config: Mapping[str, Any]) -> ServedModel:
        """Take the model ``url`` serves: the reference when it is the first, else checked
        against it. Raises :class:`ClientError` when it is another model."""
        signature = model_signature(meta, config)
        with self._lock:
            if self._first is None:
                self._first = (url, signature, ServedModel.read(meta, config))
            first_url, reference, model = self._first
        changes = signature_changes(reference, signature)
        if changes:
            raise ClientError(
                f"the Triton server at {url} serves another model {self.model_name!r} than "
                f"{first_url} ({'; '.join(changes)}, {first_url} first). Replicas behind one "
                "client must serve the same pipeline: finish the roll-out, or give this client "
                "only the urls of one version")
        return model
