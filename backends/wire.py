# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""What travels between the served models and the client, defined once for both sides.

* An item's failure (:class:`ItemFailure`): the local runner, the Triton adapter (which sends it
  inside an error message with :func:`encode_failures`) and the client (which reads it back with
  :func:`decode_failures`) all use this one format.
* Variable-shape tensors handed from one Triton step to the next travel zero-padded, each with a
  ``<name>__shapes`` companion (:func:`pad_items`, :func:`crop_items`).
* The model parameter names in ``config.pbtxt`` that the builder writes, the served adapter
  (``model_repo_templates/model.py``) reads and the client reads from the ensemble.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .operator_base import OperatorInputError, TensorSpec

#: Model parameter names (``config.pbtxt`` ``parameters``) read by the served adapter: the
#: operator, its params, and how its model format was chosen (logged when the model loads).
PARAM_OPERATOR = "towhee_operator"
PARAM_PARAMS = "towhee_params"
PARAM_FORMAT = "towhee_format"
#: Whether the adapter runs the requests of one execute() call as one batch (dynamic batching).
PARAM_MERGE_REQUESTS = "towhee_merge_requests"
#: What the first model (it receives the client's data) and the ensemble (for clients to read)
#: say about the requests they accept.
PARAM_MAX_REQUEST_BYTES = "towhee_max_request_bytes"
PARAM_MAX_ITEM_BYTES = "towhee_max_item_bytes"
#: The ensemble's input kind for clients: the first operator's input name ("image", "text").
PARAM_INPUT_KIND = "towhee_input_kind"
#: The ensemble's fingerprint for clients: 16 hex characters identifying the vectors it computes
#: (operators, weights, preprocessing, formats; see towhee_rt/fingerprint.py).
PARAM_FINGERPRINT = "towhee_fingerprint"
#: The default of ``max_item_bytes`` (pipeline_config): what one item may weigh on the wire.
DEFAULT_MAX_ITEM_BYTES = 16 * 1024 * 1024

#: Why an item failed: its input was bad, it was over a limit, or the operator broke.
ERROR_KINDS = ("bad_input", "limit", "internal")
#: Marks the structured failures inside a Triton error message (which Triton may prefix, e.g.
#: "in ensemble 'pipeline', ...").
WIRE_MARKER = "towhee_rt.item_errors="


@dataclasses.dataclass(frozen=True)
class ItemFailure:
    """One item's failure in one operator: the single format used locally and on the wire.

    ``index`` is the item's position in the batch it was sent in (the caller's list locally,
    the request on a server); ``operator`` is ``None`` when no operator was reached.
    """

    index: int
    operator: Optional[str]
    kind: str
    message: str
    source: Optional[str] = None

    def describe(self) -> str:
        """``item 1: operator image_decode.cv2_rgb: a.jpg: empty input (0 bytes); ...``."""
        where = f"operator {self.operator}" if self.operator else "request"
        what = f"{self.source}: {self.message}" if self.source else self.message
        return f"item {self.index}: {where}: {what}"

    @classmethod
    def from_exception(cls, operator: Optional[str], index: int,
                       exc: BaseException) -> "ItemFailure":
        """The failure an exception raised for one item stands for."""
        if isinstance(exc, OperatorInputError):
            return cls(index, operator, exc.kind, exc.message, exc.source)
        return cls(index, operator, "internal", f"{type(exc).__name__}: {exc}")


def encode_failures(failures: Sequence[ItemFailure]) -> str:
    """The error message of a request whose items failed: the marker, then JSON."""
    return WIRE_MARKER + json.dumps([dataclasses.asdict(f) for f in failures])


def decode_failures(text: str) -> List[ItemFailure]:
    """The failures :func:`encode_failures` put in ``text`` (``[]`` when there are none)."""
    start = (text or "").find(WIRE_MARKER)
    if start < 0:
        return []
    try:
        rows, _ = json.JSONDecoder().raw_decode(text, start + len(WIRE_MARKER))
        failures = [ItemFailure(int(r["index"]), r.get("operator"), str(r["kind"]),
                                str(r["message"]), r.get("source")) for r in rows]
    except (ValueError, TypeError, KeyError):
        return []
    return [f for f in failures if f.kind in ERROR_KINDS]


#: Suffix of the tensor that carries each item's shape beside a padded variable-shape tensor
#: handed from one Triton step to the next (a request may hold images of different sizes).
SHAPES_SUFFIX = "__shapes"


def pad_items(items: Sequence[Any], spec: TensorSpec) -> Tuple[np.ndarray, np.ndarray]:
    """Items of possibly different shapes as one zero-padded batch array, and their shapes."""
    arrays = [np.asarray(item, dtype=spec.dtype) for item in items]
    shapes = np.array([a.shape for a in arrays], dtype=np.int64).reshape(len(arrays), -1)
    out = np.zeros((len(arrays),) + tuple(shapes.max(axis=0)), dtype=spec.dtype)
    for i, array in enumerate(arrays):
        out[(i,) + tuple(slice(0, d) for d in array.shape)] = array
    return out, shapes


def crop_items(batch: Any, shapes: np.ndarray) -> List[Any]:
    """The items :func:`pad_items` padded, cut back to their shapes (views, no copy)."""
    return [batch[(i,) + tuple(slice(0, int(d)) for d in shape)]
            for i, shape in enumerate(shapes)]
