"""The operator base: batch processing with per-item failure isolation, and stacking."""
import numpy as np
import pytest

from towhee_rt.backends._operator import (Operator, OperatorInputError, TensorSpec,
                                           describe_error, process_items, stack_items)


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


def test_single_item_failure_is_not_retried():
    op = Reciprocal()
    (out,) = process_items(op, [(0.0,)])
    assert isinstance(out, OperatorInputError) and op.calls == [1]


def test_describe_error_keeps_type_of_unexpected_errors():
    assert describe_error(OperatorInputError("bad")) == "bad"
    assert describe_error(KeyError("k")) == "KeyError: 'k'"


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
