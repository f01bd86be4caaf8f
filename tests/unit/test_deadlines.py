"""backends/deadlines.py: budgets into deadlines, the tensor that carries them, expiry."""
import numpy as np

from towhee_rt.backends import deadlines as d


def test_a_budget_becomes_a_deadline_on_the_server_clock():
    assert d.deadline_from_budget(500_000, now=10**9) == 10**9 + 500_000_000
    for none in (0, None, "", "x", -5):  # no timeout: no deadline, computed as before
        assert d.deadline_from_budget(none, now=10**9) == d.NO_DEADLINE


def test_the_tensor_round_trips_and_an_empty_one_carries_none():
    column = d.deadline_column(123_456, 3)
    assert column.shape == (3, 1) and column.dtype == np.int64
    assert d.deadline_of(column) == 123_456
    assert d.deadline_of(np.zeros((2, 1), np.int64)) == d.NO_DEADLINE
    assert d.deadline_of(np.empty((0, 1), np.int64)) == d.NO_DEADLINE
    assert d.deadline_of(np.array([[7], [5], [0]])) == 5  # the earliest


def test_overdue_only_once_the_deadline_has_passed():
    assert d.overdue_ms(d.NO_DEADLINE, now=10**12) is None
    assert d.overdue_ms(2_000_000, now=1_999_999) is None
    assert d.overdue_ms(2_000_000, now=5_000_000) == 3.0
    # in time to start, not to finish: a result after the deadline reaches no one
    assert d.overdue_ms(10_000_000, now=4_000_000, expected_ns=5_000_000) is None
    assert d.overdue_ms(10_000_000, now=6_000_000, expected_ns=5_000_000) == -4.0
    assert d.overdue_ms(d.NO_DEADLINE, now=6_000_000, expected_ns=10**12) is None


def test_a_step_time_follows_its_calls():
    step = d.StepTime(weight=0.5)
    assert step.ns == 0  # nothing measured: no request is dropped for what it might take
    step.add(100)
    assert step.ns == 100
    step.add(300)
    assert step.ns == 200
    step.decay()  # a call that computed nothing: the estimate comes down, so work resumes
    assert step.ns == 100


def test_the_message_names_the_operator_and_reads_as_a_timeout_to_clients():
    from towhee_rt.client.failures import TIMEOUT, classify_error

    message = d.expired_message("image_embedding.timm", 12.3)
    assert message.startswith("operator image_embedding.timm: deadline exceeded")
    assert "12 ms" in message
    early = d.expired_message("image_embedding.timm", -4.0, 30.0)
    assert "had 4 ms left, less than this step takes (about 30 ms)" in early
    # The client reads it as its own deadline (not a failure of the items, and not "busy":
    # another replica could not finish it in time either), for both kinds of drop.
    assert classify_error(RuntimeError(message)) == TIMEOUT
    assert classify_error(RuntimeError(early)) == TIMEOUT
