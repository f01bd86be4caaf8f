"""The LitServe peer's ``LitAPI`` (imported only where litserve is installed).

A module of its own, at top level, because LitServe starts its workers with ``spawn`` and
pickles the API object into each of them: the class must be importable by name. See
``bench/peer_litserve.py`` for what it serves and how it is started.
"""
from __future__ import annotations

import numpy as np
import litserve as ls

from .peer_litserve import item_from_request


class EmbeddingAPI(ls.LitAPI):
    """Embeddings from the ONNX model with the PyTriton peer's preprocessing, batched by
    LitServe (``max_batch_size`` / ``batch_timeout``)."""

    def __init__(self, pipeline: str, model_file: str, threads: int, **kwargs):
        super().__init__(**kwargs)
        self.pipeline, self.model_file, self.threads = pipeline, model_file, threads

    def setup(self, device):
        import onnxruntime as ort

        from .peer_pytriton import make_preprocess

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.model_file, options,
                                            providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.preprocess = make_preprocess(self.pipeline)

    def decode_request(self, request):
        return item_from_request(self.pipeline, request)

    def batch(self, inputs):
        return list(inputs)  # encoded items of different sizes: a list, not a stack

    def predict(self, items):
        feed = self.preprocess(items)
        return self.session.run(None, {n: feed[n] for n in self.names})[0]

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"embedding": np.asarray(output, dtype=np.float32).tolist()}
