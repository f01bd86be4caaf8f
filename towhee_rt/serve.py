"""``python -m towhee_rt.serve REPO``: the same as ``towhee-rt serve REPO``.

The command line lives in :mod:`towhee_rt.cli` and :func:`serve` in
:mod:`towhee_rt.triton.server`; this module keeps the old entry points working::

    python -m towhee_rt.serve repo/ --grpc-port 8001     # towhee_rt.cli.serve_main
    towhee_rt.serve("repo/", grpc_port=0)                 # towhee_rt.triton.server.serve
"""
from __future__ import annotations

import sys
import types

from .cli import serve_main as main
from .triton.server import serve

__all__ = ["main", "serve"]


class _CallableModule(types.ModuleType):
    """Calling the module calls :func:`towhee_rt.triton.server.serve`."""

    def __call__(self, *args, **kwargs):
        return serve(*args, **kwargs)


# Importing this submodule (``python -m towhee_rt.serve``, ``import towhee_rt.serve``) rebinds
# the package attribute ``towhee_rt.serve`` from the function to this module; being callable,
# the module keeps ``towhee.serve(repo, ...)`` working for everyone afterwards.
sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
