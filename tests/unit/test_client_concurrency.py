"""The client's default concurrency from the served model's config: the value ``towhee-rt tune``
records (``towhee_client_concurrency``) is used when valid, anything else is ignored with a
warning; a call's own ``concurrency`` is checked as before. (Served end to end, with the
requests in flight counted: tests/integration/test_client_tuned_concurrency.py.)"""
import logging

import pytest

from towhee_rt import Client
from towhee_rt.client.client import (DEFAULT_CONCURRENCY, MAX_RECORDED_CONCURRENCY,
                                     PARAM_CLIENT_CONCURRENCY, served_concurrency)
from towhee_rt.errors import ConfigError


def config(value=None):
    parameters = {"towhee_fingerprint": {"string_value": "0123456789abcdef"}}
    if value is not None:
        parameters[PARAM_CLIENT_CONCURRENCY] = {"string_value": value}
    return {"name": "pipeline", "parameters": parameters}


def test_a_recorded_concurrency_is_read_from_the_config():
    assert PARAM_CLIENT_CONCURRENCY == "towhee_client_concurrency"
    assert served_concurrency(config("8")) == 8
    assert served_concurrency(config(" 16 ")) == 16
    assert served_concurrency(config(str(MAX_RECORDED_CONCURRENCY))) == MAX_RECORDED_CONCURRENCY
    assert served_concurrency(config()) is None  # never tuned
    assert served_concurrency({}) is None and served_concurrency(config("")) is None


@pytest.mark.parametrize("bad", ["0", "-2", "four", "2.5", str(MAX_RECORDED_CONCURRENCY + 1)])
def test_an_unusable_recorded_concurrency_is_ignored_with_a_warning(bad, caplog):
    with caplog.at_level(logging.WARNING, logger="towhee_rt.client.client"):
        assert served_concurrency(config(bad), "pipeline") is None
    assert f"towhee_client_concurrency={bad!r}" in caplog.text
    assert f"sends {DEFAULT_CONCURRENCY} requests at once" in caplog.text


def test_an_explicit_concurrency_is_still_checked_before_anything_is_sent():
    client = Client("127.0.0.1:1", retries=0)  # nothing listens: nothing may be reached
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ConfigError, match="concurrency must be a positive integer"):
            client.infer([b"x"], concurrency=bad)
    assert len(client._transport.connections) == 0
