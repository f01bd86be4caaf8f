"""A repository never downloads: served with the hub cache removed and HF_HUB_OFFLINE=1, every
pipeline of tests/pretrained_cases.py (pretrained tiny models: timm by registry name and by hub
repo, open_clip image and text, sentence-transformers, transformers; torch and ONNX formats)
answers what it answered locally."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.accel.parity import relative_error

from ..pretrained_cases import CASES, inputs

pytestmark = pytest.mark.integration


def test_served_repository_needs_no_hub_and_matches_local(pretrained_build, tmp_path):
    hub = Path(pretrained_build["hub"])
    shutil.rmtree(hub)  # the cache the repository was built from is gone
    nowhere = {"HF_HUB_CACHE": str(hub), "HF_HOME": str(tmp_path / "no_hf_home"),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    local = np.load(Path(pretrained_build["repo"]).parent / "local.npz")
    with towhee.serve(pretrained_build["repo"], grpc_port=0, http_port=0, metrics_port=0,
                      env=nowhere) as server:
        for case in CASES:
            served = np.stack(towhee.dc(inputs(case)).remote(url=server.grpc_url,
                                                             model_name=case))
            assert served.shape == local[case].shape, case
            assert relative_error(served, local[case]) <= 1e-5, case
    assert not hub.exists() and not (tmp_path / "no_hf_home").exists()  # nothing downloaded
