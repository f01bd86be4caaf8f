"""towhee_rt's client of served pipelines (tritonclient over gRPC or HTTP).

Example::

    from towhee_rt import Client
    with Client("127.0.0.1:8001", model_name="pipeline") as client:
        vectors = client.infer(["a.jpg", "b.jpg"])

The modules, each with one job:

* :mod:`.client`: :class:`Client`, which composes the others;
* :mod:`.endpoints`: the urls, and which endpoint (replica) gets the next request;
* :mod:`.retry`: the retry policy and the one attempt loop (retries and failover);
* :mod:`.failures`: what a tritonclient error means, and the errors users see for it;
* :mod:`.transport`: tritonclient connections (per thread and endpoint) and calls;
* :mod:`.model`: the served model, and the check that every endpoint serves the same one;
* :mod:`.batches`: items into requests, run concurrently, per-item results and errors;
* :mod:`.inputs`: what is sent for each item, and the server's byte limits.
"""
from .client import Client, RequestRecord
from .endpoints import ReplicaStats

__all__ = ["Client", "RequestRecord", "ReplicaStats"]
