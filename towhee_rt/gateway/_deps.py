"""The gateway's optional dependencies, imported only when a gateway is built."""
from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'towhee_rt[openai]'"


def require(module: str) -> ModuleType:
    """Import ``module`` (one of the gateway's runtime dependencies), or raise ImportError
    naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"the OpenAI-compatible gateway needs {module.split('.')[0]!r}, which is not "
            f"installed ({exc}); install the gateway's dependencies with: {INSTALL_HINT}"
        ) from exc
