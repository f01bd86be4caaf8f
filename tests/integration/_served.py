"""Serving several test pipelines from one repository, on free loopback ports."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import towhee_rt as towhee


def serve_pipelines(pipes: Mapping[str, Any], repo: Path, **serve_kwargs):
    """Build each pipeline into ``repo`` under its name and serve them all; a server that
    stops on leaving its ``with`` block (extra keywords go to ``towhee_rt.serve``)."""
    for name, pipe in pipes.items():
        towhee.build_model_repo(pipe, repo, model_name=name, overwrite=True)
    return towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0, **serve_kwargs)
