"""``towhee-rt serve --openai-port`` and ``towhee.serve(openai_port=...)``: the OpenAI endpoint
comes up with the server, clients no one here wrote (``openai``, ``langchain-openai``) get the
local pipeline's vectors through it, and it stops with the server."""
from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt import samples

pytestmark = pytest.mark.integration

openai = pytest.importorskip("openai")
langchain_openai = pytest.importorskip("langchain_openai")
pytest.importorskip("starlette")

KEY = "openai-cli-key-0123456789"
IMAGES = [samples.path("chelsea.jpg"), samples.path("coffee.jpg")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pipe = (towhee.dummy_input().image_decode.cv2_rgb()
            .image_embedding.timm(model_name="test_resnet", pretrained=False).as_function())
    repo = towhee.build_model_repo(pipe, tmp_path_factory.mktemp("openai") / "repo")
    return repo, np.stack(pipe(IMAGES))


def _b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _assert_local(got, want):
    got = np.asarray(got, dtype=np.float32)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_cli_serves_openai_clients_the_local_vectors(built, tmp_path):
    repo, local = built
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    argv = [sys.executable, "-m", "towhee_rt", "serve", str(repo.path), "--grpc-port", "0",
            "--http-port", "0", "--metrics-port", "0", "--openai-port", "0",
            "--api-key-file", str(key_file)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        banner, url = [], None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner.append(line)
            found = re.search(r"OpenAI:\s+(http://\S+)/v1/embeddings", line)
            url = found.group(1) if found else url
            if "Press Ctrl-C" in line:
                break
        assert url, "".join(banner)
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        got = client.embeddings.create(model="pipeline", input=[_b64(p) for p in IMAGES])
        _assert_local([row.embedding for row in got.data], local)
        lc = langchain_openai.OpenAIEmbeddings(model="pipeline", base_url=url + "/v1",
                                               api_key=KEY, check_embedding_ctx_length=False,
                                               max_retries=0)
        _assert_local(lc.embed_documents([_b64(p) for p in IMAGES]), local)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong-key-0123456789",
                          max_retries=0).embeddings.create(model="pipeline",
                                                           input=[_b64(IMAGES[0])])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(banner) + rest


def test_library_serve_with_openai_port(built):
    repo, local = built
    with towhee.serve(repo.path, grpc_port=0, http_port=0, metrics_port=0,
                      openai_port=0) as server:
        url = server.openai_url
        got = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                            timeout=60).embeddings.create(model="pipeline",
                                                          input=[_b64(IMAGES[1])])
        _assert_local([got.data[0].embedding], local[1:])
    with pytest.raises(Exception):  # stopped with the server
        openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                      timeout=5).embeddings.create(model="pipeline", input=[_b64(IMAGES[1])])
