"""towhee_rt: serve embedding pipelines on NVIDIA Triton Inference Server from Python.

The public API follows Towhee's "Triton in Towhee" guide::

    import towhee_rt as towhee
    pipe = (towhee.dummy_input()
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name='resnet50')
            .as_function())
"""
from .datacollection import DataCollection, dc
from .build import BuiltPipeline, BuiltStep
from .errors import (BadInputError, ClientError, ConfigError, DeadlineExceededError,
                     DockerError, FormatError, ItemError, LimitExceededError, PipelineError,
                     ServerBusyError, ServerError, ServerUnavailableError, TowheeRTError)
from .operator import Operator, OperatorInputError, OperatorLimitError, Param, TensorSpec
from .backends.model_operator import ModelInput, ModelOperator
from .registry import register
from .pipeline import Pipeline, PipelineBuilder, dummy_input
# Not `from .serve import serve`: the towhee_rt.serve module is `python -m towhee_rt.serve`,
# which must not be imported before it runs (RuntimeWarning); it is callable, like this function.
from .triton.server import serve
from .triton.docker import build_docker_image
from .triton.repository import ModelRepository, build_model_repo

__version__ = "0.1.0"


def __getattr__(name):
    # Client pulls in tritonclient; import it only when asked for.
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'towhee_rt' has no attribute {name!r}")


__all__ = [
    "dummy_input", "dc", "Pipeline", "PipelineBuilder", "DataCollection", "BuiltPipeline",
    "BuiltStep", "build_model_repo", "ModelRepository", "build_docker_image", "serve", "Client",
    "Operator", "OperatorInputError", "OperatorLimitError", "Param", "TensorSpec",
    "ModelOperator", "ModelInput", "register",
    "TowheeRTError", "ConfigError", "ItemError", "BadInputError", "LimitExceededError",
    "PipelineError", "ServerError", "ClientError", "ServerUnavailableError", "ServerBusyError",
    "DeadlineExceededError", "DockerError", "FormatError",
]
