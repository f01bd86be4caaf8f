"""The operator base: batch processing with per-item failure isolation, and stacking."""
import gc
import weakref

import numpy as np
import pytest

from towhee_rt.backends.operator_base import (Operator, OperatorInputError, OperatorLimitError,
                                              OperatorParamError, Param, TensorSpec, positive)
from towhee_rt.backends.wire import ItemFailure, decode_failures, encode_failures
from towhee_rt.backends.batching import detach_tracebacks, process_items, stack_items


class Reciprocal(Operator):
    """A tiny real operator: 1/x, refusing zero; counts its batch calls."""

    name = "test.reciprocal"
    inputs = [TensorSpec("x", "float32")]
    outputs = [TensorSpec("y", "float32")]

    def __init__(self, **params):
        super().__init__(**params)
        self.calls = []

    def process_batch(self, batch):
        self.calls.append(len(batch["x"]))
        if any(x == 0 for x in batch["x"]):
            raise OperatorInputError("x must be non-zero")
        return {"y": [1.0 / x for x in batch["x"]]}


def test_good_batch_runs_in_one_call():
    op = Reciprocal()
    assert process_items(op, [(1.0,), (2.0,), (4.0,)]) == [(1.0,), (0.5,), (0.25,)]
    assert op.calls == [3]


def test_one_bad_item_is_isolated_and_others_survive():
    op = Reciprocal()
    out = process_items(op, [(1.0,), (0.0,), (4.0,)])
    assert out[0] == (1.0,) and out[2] == (0.25,)
    assert isinstance(out[1], OperatorInputError)
    assert op.calls == [3, 1, 1, 1]  # the batch, then each item alone


class _Held:
    """Stands for a request's decoded images, held by the caller of ``process_items``."""


def _serve_once(detach):
    held = _Held()
    outcomes = process_items(Reciprocal(), [(1.0,), (0.0,)])
    if detach:
        detach_tracebacks(outcomes)
    return weakref.ref(held), outcomes


def test_detached_failures_do_not_keep_the_callers_data_alive():
    """A failed item's traceback reaches the caller's frame through ``f_back``: without the
    cyclic collector, the caller's data lives as long as the failure (bench/results/memory.md).
    Detached, it goes with the frame; the failure keeps its traceback as text."""
    gc.disable()
    try:
        kept, outcomes = _serve_once(detach=False)
        assert kept() is not None  # the cycle the servers avoid
        freed, detached = _serve_once(detach=True)
        assert freed() is None
    finally:
        gc.enable()
    failure = detached[1]
    assert isinstance(failure, OperatorInputError) and failure.__traceback__ is None
    assert "in _single" in failure.traceback_text
    assert failure.traceback_text.endswith("OperatorInputError: x must be non-zero")
    assert detached[0] == (1.0,)


def test_single_item_failure_is_not_retried():
    op = Reciprocal()
    (out,) = process_items(op, [(0.0,)])
    assert isinstance(out, OperatorInputError) and op.calls == [1]


def test_item_failure_kinds_and_the_one_spelling():
    bad = ItemFailure.from_exception("op.x", 2, OperatorInputError("not an image", source="a.jpg"))
    assert (bad.kind, bad.source, bad.message) == ("bad_input", "a.jpg", "not an image")
    assert bad.describe() == "item 2: operator op.x: a.jpg: not an image"
    limit = ItemFailure.from_exception("op.x", 0, OperatorLimitError("too many pixels"))
    assert limit.kind == "limit"
    internal = ItemFailure.from_exception("op.x", 1, KeyError("k"))
    assert (internal.kind, internal.message) == ("internal", "KeyError: 'k'")


def test_failures_round_trip_through_a_wrapped_wire_message():
    failures = [ItemFailure(0, "op.x", "bad_input", 'quote " and ; and \u00e9', "<encoded, 3 bytes>"),
                ItemFailure(3, "op.x", "internal", "RuntimeError: boom")]
    # Triton prefixes the step's message when it passes through an ensemble.
    text = "in ensemble 'pipeline', " + encode_failures(failures)
    assert decode_failures(text) == failures


@pytest.mark.parametrize("text", ["", "failed to connect to all addresses",
                                  "towhee_rt.item_errors=[{\"index\": 0}]",
                                  "towhee_rt.item_errors=not json",
                                  'towhee_rt.item_errors=[{"index": 0, "operator": "x", '
                                  '"kind": "weird", "message": "m"}]'])
def test_decode_failures_ignores_text_without_valid_failures(text):
    assert decode_failures(text) == []


class Scaled(Operator):
    name = "test.scaled"
    params_spec = Operator.params_spec + (
        Param("factor", (int, float), 1.0, "multiplier", positive),
        Param("label", (str,), doc="required label"),
    )


def test_declared_params_get_defaults_and_are_checked():
    assert Scaled(label="a").params == {"artifact_dir": None, "factor": 1.0, "label": "a"}
    for params, fragment in [
            ({"label": "a", "factr": 2}, "unknown param(s) 'factr'; valid params are: factor "
                                         "(number, default 1.0), label (str, required)"),
            ({"label": "a", "factor": "2"}, "param 'factor' must be number, got '2'"),
            ({"label": "a", "factor": True}, "param 'factor' must be number, got True"),
            ({"label": "a", "factor": -1}, "param 'factor' must be positive, got -1"),
            ({}, "the param 'label' is required"),
    ]:
        with pytest.raises(OperatorParamError) as info:
            Scaled(**params)
        assert fragment in str(info.value) and "test.scaled" in str(info.value)


def test_internal_params_are_refused_from_users_only():
    with pytest.raises(OperatorParamError, match="set by towhee_rt itself"):
        Scaled.check_params({"label": "a", "artifact_dir": "/x"})
    assert Scaled(label="a", artifact_dir="/x").artifact_dir == "/x"


def test_wrong_output_length_is_an_error():
    class Broken(Reciprocal):
        def process_batch(self, batch):
            return {"y": []}

    out = process_items(Broken(), [(1.0,)])
    assert "0 items for 1 inputs" in str(out[0])


def test_stack_items_for_strings_and_arrays():
    text = stack_items(["a", b"b"], TensorSpec("t", "bytes"))
    assert text.dtype == np.object_ and list(text) == [b"a", b"b"]
    arr = stack_items([np.ones(3), np.zeros(3)], TensorSpec("e", "float32", (3,)))
    assert arr.shape == (2, 3) and arr.dtype == np.float32


def test_tensor_spec_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="not supported"):
        TensorSpec("x", "complex64")
