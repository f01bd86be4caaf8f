"""towhee_rt: serve embedding pipelines on NVIDIA Triton Inference Server from Python."""
