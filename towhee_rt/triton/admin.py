# SHIPPED: copied verbatim into the image's build context as towhee_rt_supervisor/admin.py
# (towhee_rt.shipped.SUPERVISOR). Standard library and its sibling modules only; never towhee_rt.
"""The HTTP calls made to a tritonserver: repository index, load, reload, unload, readiness.

:class:`TritonAdmin` is the one HTTP client of both the supervisor (:mod:`.supervisor`) and
:class:`~towhee_rt.triton.server.TritonServer`. Standard library only: copied into images with
the supervisor (:mod:`.supervisor_main`).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Dict, Mapping, Optional, Tuple

#: The model-config parameter whose new value makes Triton load a model afresh.
RELOAD_PARAMETER = "towhee_rt_reload"


class TritonAdmin:
    """The few HTTP calls made to one server: repository index, load, unload, readiness.

    ``http_url`` is ``'host:port'``; ``headers`` carry the admin key (the model-repository
    API is restricted to it) and, when inference needs one, the API key (so is a model's
    config). A request with ``admin=False`` carries no key (health and readiness are open).
    """

    def __init__(self, http_url: str, headers: Optional[Mapping[str, str]] = None):
        self.http_url = http_url
        self.headers = dict(headers or {})

    def request(self, method: str, path: str, timeout: float = 2.0, admin: bool = True,
                body: Optional[dict] = None) -> Tuple[int, bytes]:
        """(HTTP status, body); status 0 when the server does not answer."""
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=data,
                                         method=method, headers=self.headers if admin else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def index(self) -> Optional[Dict[str, str]]:
        """Model name -> state (``READY``, ``UNAVAILABLE``, ``LOADING``, ``UNLOADING``) of
        every model in the repository; ``None`` when the server does not answer."""
        status, body = self.request("POST", "/v2/repository/index")
        if status != 200:
            return None
        return {entry["name"]: entry.get("state", "UNKNOWN") for entry in json.loads(body)}

    def load(self, model: str, timeout: float) -> Tuple[bool, str]:
        """Load ``model`` from the repository; (success, Triton's error message). A model
        that is loaded already and unchanged on disk is left as it is, dead stubs included."""
        status, body = self.request("POST", f"/v2/repository/models/{model}/load", timeout)
        return status == 200, _error_text(status, body)

    def reload(self, model: str, timeout: float) -> Tuple[bool, str]:
        """Load a new copy of the loaded ``model`` (new instances) while the current one keeps
        serving until it is ready. A plain load of an unchanged model does nothing, and a
        config that differs only in its instances reuses the unchanged ones, so this loads
        the running config with a parameter ``towhee_rt_reload`` (ignored by the models) set
        to a new value."""
        status, body = self.request("GET", f"/v2/models/{model}/config")
        if status != 200:
            return False, f"cannot read its config: {_error_text(status, body)}"
        config = json.loads(body)
        config.setdefault("parameters", {})[RELOAD_PARAMETER] = {
            "string_value": f"{time.time():.6f}"}
        status, body = self.request("POST", f"/v2/repository/models/{model}/load", timeout,
                                    body={"parameters": {"config": json.dumps(config)}})
        return status == 200, _error_text(status, body)

    def unload(self, model: str) -> Tuple[bool, str]:
        """Start unloading ``model`` (Triton finishes it in the background)."""
        status, body = self.request("POST", f"/v2/repository/models/{model}/unload")
        return status == 200, _error_text(status, body)

    def ready(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200 (open to everyone, no key)."""
        return self.request("GET", "/v2/health/ready", admin=False)[0] == 200


def _error_text(status: int, body: bytes) -> str:
    if status == 200:
        return ""
    if status == 0:
        return "the server did not answer"
    try:
        return str(json.loads(body).get("error", body.decode(errors="replace")))
    except ValueError:
        return body.decode(errors="replace") or f"HTTP {status}"

