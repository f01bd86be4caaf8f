# SHIPPED: copied verbatim into the image's build context as towhee_rt_supervisor/__main__.py
# (towhee_rt.shipped.SUPERVISOR). Standard library only; never towhee_rt.
"""python3 DIR run -- tritonserver ... (or python3 -m PACKAGE run -- ...)."""
import importlib
import os
import sys

if __package__:
    from .supervisor_main import main
else:  # python3 DIR: import the package from DIR's parent, which takes DIR's place on sys.path
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0]) == _here:
        del sys.path[0]
    sys.path.insert(0, os.path.dirname(_here))
    main = importlib.import_module(os.path.basename(_here) + ".supervisor_main").main

sys.exit(main())
