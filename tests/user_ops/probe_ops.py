"""A user operator that reports which towhee_rt its module imported (served: the stand-in)."""
import json
import sys

import towhee_rt
from towhee_rt import TensorSpec, register


@register("test_probe.towhee_rt_origin", inputs=[TensorSpec("text", "bytes")],
          outputs=[TensorSpec("report", "bytes")])
def towhee_rt_origin(text):
    """Any text -> JSON: towhee_rt's file, its loaded submodules, and the Python's prefix."""
    return json.dumps({
        "towhee_rt": towhee_rt.__file__,
        "submodules": sorted(m for m in sys.modules if m.startswith("towhee_rt.")),
        "prefix": sys.prefix,
    })
