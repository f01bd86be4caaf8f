"""A user's model operator: 8 float32 features -> a 4-dim embedding (a seeded Linear + tanh).

Subclassing towhee_rt.ModelOperator gives it the model formats (ONNX, int8, TensorRT) for
free: it describes the torch module, its inputs, and the pre-processing.
"""
import numpy as np

from towhee_rt import ModelInput, ModelOperator, TensorSpec, register


@register("test_model.tiny_linear")
class TinyLinear(ModelOperator):
    """Float32 vectors of 8 -> 4-dim embeddings."""

    inputs = [TensorSpec("features", "float32", (8,))]
    outputs = [TensorSpec("embedding", "float32", (4,))]

    def build_torch_module(self):
        import torch

        return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh())

    def model_inputs(self):
        return [ModelInput("features", "float32", (-1, 8))]

    def preprocess(self, batch):
        return {"features": np.stack([np.asarray(x, np.float32) for x in batch["features"]])}

    def example_inputs(self, batch_size, rng):
        return {"features": rng.standard_normal((batch_size, 8)).astype(np.float32)}
