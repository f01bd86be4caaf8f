"""Run one KServe client call in a process of its own; the conformance tests drive it.

Why a process: ``kserve`` and ``tritonclient.grpc`` each register Triton's
``grpc_service.proto`` (package ``inference``) in protobuf's default descriptor pool, so
importing both in one process fails (``duplicate symbol 'inference.ServerLiveRequest'``),
whichever comes first; towhee_rt imports tritonclient.grpc.

Reads one JSON job on stdin::

    {"transport": "grpc" | "rest", "url": "127.0.0.1:8001", "model": "image",
     "input": "image", "items_b64": [...] | "texts": [...], "binary": true,
     "headers": [[key, value], ...] | null}

and writes one JSON answer on stdout: ``{"ok": true, "live", "ready", "model_ready" (each
true/false, or over REST "raised <Exception>"),
"outputs": {name: {"name", "datatype", "shape", "data"}}}`` or ``{"ok": false, "kind", "status",
"code", "message"}`` (``status``: the HTTP status; ``code``: the gRPC status name).
"""
from __future__ import annotations

import asyncio
import base64
import json
import sys

import numpy as np


def _request(kserve, job):
    if "texts" in job:
        items = job["texts"]
    else:
        items = [base64.b64decode(item) for item in job["items_b64"]]
    if job.get("binary", True):
        array = np.array([[item if isinstance(item, bytes) else item.encode()]
                          for item in items], dtype=np.object_)
        tensor = kserve.InferInput(job["input"], list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array, binary_data=True)
    else:  # plain JSON data: strings only
        tensor = kserve.InferInput(job["input"], [len(items), 1], "BYTES",
                                   data=[[item] for item in items])
    request = kserve.InferRequest(model_name=job["model"], infer_inputs=[tensor])
    if not job.get("binary", True):
        assert request.to_rest()[1] is None, "expected a plain JSON request"
    return request


async def _grpc(kserve, job):
    client = kserve.InferenceGRPCClient(job["url"], timeout=60, retries=0)
    try:
        answer = {"live": await client.is_server_live(), "ready": await client.is_server_ready(),
                  "model_ready": await client.is_model_ready(job["model"])}
        headers = tuple(tuple(h) for h in job["headers"]) if job.get("headers") else None
        response = await client.infer(_request(kserve, job), headers=headers)
        return answer, response
    finally:
        await client.close()


async def _health(call):
    """The health call's answer, or the name of the exception it raised: KServe's REST client
    reads ``{"live": true}`` from the body, and Triton answers health with an empty one."""
    try:
        return await call
    except Exception as exc:  # noqa: BLE001 - reported to the test as data
        return f"raised {type(exc).__name__}"


async def _rest(kserve, job):
    base = f"http://{job['url']}"
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=60))
    try:
        answer = {"live": await _health(client.is_server_live(base)),
                  "ready": await _health(client.is_server_ready(base)),
                  "model_ready": await _health(client.is_model_ready(base, job["model"]))}
        headers = dict(job["headers"]) if job.get("headers") else None
        response = await client.infer(base, _request(kserve, job), model_name=job["model"],
                                      headers=headers)
        return answer, response
    finally:
        await client.close()


def main() -> None:
    """Run the job on stdin and print the answer."""
    import grpc
    import httpx
    import kserve

    job = json.load(sys.stdin)
    try:
        answer, response = asyncio.run((_grpc if job["transport"] == "grpc" else _rest)(
            kserve, job))
    except grpc.RpcError as exc:
        print(json.dumps({"ok": False, "kind": "grpc", "code": exc.code().name,
                          "message": exc.details()}))
        return
    except httpx.HTTPStatusError as exc:
        print(json.dumps({"ok": False, "kind": "http", "status": exc.response.status_code,
                          "message": exc.response.text, "client_message": str(exc)}))
        return
    outputs = {}
    for output in response.outputs:
        array = output.as_numpy()
        outputs[output.name] = {"name": output.name, "datatype": output.datatype,
                                "shape": list(array.shape), "data": array.ravel().tolist()}
    answer.update(ok=True, outputs=outputs)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
