"""A user operator that takes its time: a pair of numbers passed on unchanged after ``seconds``.

Chained three times it makes a pipeline whose steps are slow in known amounts, so that tests can
let a request's deadline pass at a chosen step (tests/integration/test_deadlines.py).
"""
import time

import numpy as np

from towhee_rt import TensorSpec, register


@register("test_slow.pause", inputs=[TensorSpec("x", "float32", (2,))],
          outputs=[TensorSpec("x", "float32", (2,))])
def pause(x, *, seconds=0.0, tally=""):
    """``x`` unchanged, after sleeping ``seconds`` (per item); with ``tally`` (a file path),
    one line appended there per item computed (a counter the test reads)."""
    time.sleep(seconds)
    if tally:
        with open(tally, "a") as counter:
            counter.write("1\n")
    return np.asarray(x, dtype=np.float32)
