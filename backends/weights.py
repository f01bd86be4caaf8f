# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""Where pretrained weights come from, and the one error for weights that cannot be had.

The libraries (timm, open_clip, sentence-transformers, transformers) download through the
Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``; layout ``models--org--name/refs/main``
holding a commit id, ``snapshots/<commit>/<files>``), which they honour themselves, as they
honour ``HF_HUB_OFFLINE``. This module only reads that cache: which commit was loaded, and where
it was searched when loading failed.

Copied into generated Triton repositories: relative imports and third-party packages only;
huggingface_hub is imported when first needed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from .operator_base import OperatorParamError

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
#: Seconds the hub endpoint gets to accept a TCP connection before a load searches only the
#: cache (``TOWHEE_RT_HUB_PROBE_TIMEOUT_S`` overrides). Without the probe an unreachable hub
#: costs ~50 s of huggingface_hub's retries (5, backing off to 8 s) before the same error.
HUB_PROBE_TIMEOUT_S = 3.0
#: endpoint -> (monotonic time, reachable): a probe's answer, reused for HUB_PROBE_TTL_S.
_PROBES: Dict[str, Tuple[float, bool]] = {}
HUB_PROBE_TTL_S = 60.0


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """Load weights without the libraries' progress bars (transformers' "Loading weights",
    huggingface_hub's downloads): a build or a served model's log shows what happened, not
    hundreds of bar updates. Warnings and errors are untouched; the bars come back after."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # no transformers: nothing of theirs to silence
        yield
        return
    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # huggingface_hub's bars too
    try:
        yield
    finally:
        if was_on:
            transformers_logging.enable_progress_bar()


def hub_endpoint() -> str:
    """The hub the libraries download from (``HF_ENDPOINT``, default https://huggingface.co)."""
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:
        return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _probe_address(endpoint: str) -> Tuple[str, int]:
    """Where a connection to ``endpoint`` goes first: its proxy when one applies, else itself."""
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = getproxies().get(parts.scheme) or getproxies().get("all")
    if proxy and not proxy_bypass(host):
        proxied = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        return proxied.hostname or host, proxied.port or 8080
    return host, port


def hub_reachable(timeout: Optional[float] = None) -> bool:
    """Whether the hub endpoint (or its proxy) accepts a TCP connection within ``timeout``
    seconds (name resolution included). The answer is reused for a minute."""
    endpoint = hub_endpoint()
    now = time.monotonic()
    cached = _PROBES.get(endpoint)
    if cached and now - cached[0] < HUB_PROBE_TTL_S:
        return cached[1]
    if timeout is None:
        timeout = float(os.environ.get("TOWHEE_RT_HUB_PROBE_TIMEOUT_S") or HUB_PROBE_TIMEOUT_S)
    host, port = _probe_address(endpoint)
    answer = []

    def connect() -> None:  # in a thread: getaddrinfo has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=connect, name="towhee_rt-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    reachable = bool(answer and answer[0])
    _PROBES[endpoint] = (now, reachable)
    return reachable


def hub_probe_failed() -> bool:
    """Whether the last probe of the current endpoint found it unreachable."""
    cached = _PROBES.get(hub_endpoint())
    return bool(cached and not cached[1])


@contextlib.contextmanager
def hub_or_cache() -> Iterator[None]:
    """Load weights from the hub when it can be reached, else from the cache alone, at once.

    Unless ``HF_HUB_OFFLINE`` is set, the hub endpoint is probed first (a TCP connection, at
    most :data:`HUB_PROBE_TIMEOUT_S`); when it does not answer, the libraries' load runs in
    huggingface_hub's offline mode (what ``HF_HUB_OFFLINE=1`` does): weights in the cache load
    as usual, others fail in seconds instead of after a minute of retries. Process-wide for the
    duration of the load (huggingface_hub reads one flag)."""
    if hub_offline() or hub_reachable():
        yield
        return
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


class WeightsUnavailableError(OperatorParamError):
    """The weights an operator was asked for cannot be loaded (hub unreachable, file missing).

    Raised when the model is built; never replaced by random weights. The pipeline reports it as
    a ``ConfigError``.
    """


def hub_cache_dir() -> str:
    """The Hugging Face hub cache the libraries search (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")


def hub_offline() -> bool:
    """Whether huggingface_hub runs offline (``HF_HUB_OFFLINE``, read when it was imported)."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


def split_revision(repo_id: str) -> Tuple[str, Optional[str]]:
    """``'org/name@rev'`` -> ``('org/name', 'rev')``; no ``@``: ``(repo_id, None)``."""
    name, _, revision = repo_id.partition("@")
    return name, revision or None


def cached_commit(repo_id: str, revision: Optional[str] = None) -> Optional[str]:
    """The commit of ``repo_id`` at ``revision`` (default ``main``) in the hub cache, i.e. the
    snapshot the libraries load from; ``None`` when the cache has no such ref."""
    repo_id, at = split_revision(repo_id)
    revision = revision or at or "main"
    if _COMMIT_RE.match(revision):
        return revision
    ref = os.path.join(hub_cache_dir(), "models--" + repo_id.replace("/", "--"), "refs", revision)
    try:
        with open(ref, encoding="utf-8") as f:
            commit = f.read().strip()
    except OSError:
        return None
    return commit if _COMMIT_RE.match(commit) else None


def cached_file(repo_id: str, filename: str) -> str:
    """The path of ``filename`` of ``repo_id`` in the hub cache (never downloads); raises
    :class:`WeightsUnavailableError` when the cache does not hold it."""
    from huggingface_hub import try_to_load_from_cache

    name, revision = split_revision(repo_id)
    path = try_to_load_from_cache(name, filename, revision=revision)
    if not isinstance(path, str):
        raise WeightsUnavailableError(
            f"{filename} of the Hugging Face repo {name!r} is not in the cache "
            f"{hub_cache_dir()}; build again where the hub is reachable")
    return path


def hub_source(repo_id: str, **extra: Any) -> Dict[str, Any]:
    """The lock's description of weights loaded from the hub: repo, commit and ``extra``."""
    name, _ = split_revision(repo_id)
    return {"source": "hf-hub", "repo_id": name, "revision": cached_commit(repo_id),
            **{k: v for k, v in extra.items() if v is not None}}


def weights_unavailable(operator: str, what: str, repo_id: Optional[str], cause: BaseException,
                        ways: Sequence[str], kind: str = "pretrained weights"
                        ) -> WeightsUnavailableError:
    """The error for weights (or the ``kind`` of files named) that cannot be loaded: what was
    asked for, why it failed, the cache that was searched, and ``ways`` out (each a sentence)."""
    reason = str(cause).strip().splitlines()
    reason = f"{type(cause).__name__}: {reason[0][:400] if reason else ''}"
    where = f" from the Hugging Face repo {repo_id!r}" if repo_id else ""
    if hub_offline():
        offline = "HF_HUB_OFFLINE is set, so nothing was downloaded"
    elif hub_probe_failed():
        offline = (f"the hub {hub_endpoint()} could not be reached (no connection within "
                   f"{HUB_PROBE_TIMEOUT_S:g} s), so only this cache was searched; set "
                   "HF_HUB_OFFLINE=1 to load from the cache without trying the hub, or pass "
                   "checkpoint_path= to load a weights file")
    else:
        offline = "the hub could not be reached or does not have them"
    options = "; ".join(f"({n}) {way}" for n, way in enumerate(ways, start=1))
    instead = " No random weights are used in their place." if "weights" in kind else ""
    return WeightsUnavailableError(
        f"{operator}: cannot load the {kind} of {what}{where} ({reason}). Searched "
        f"the Hugging Face cache {hub_cache_dir()} (set by HF_HOME / HF_HUB_CACHE); {offline}."
        f"{instead} Ways out: {options}.")


def download_hint(repo_id: Optional[str]) -> str:
    """The "pre-download" way out for :func:`weights_unavailable`."""
    command = f"`hf download {split_revision(repo_id)[0]}`" if repo_id else "the same build"
    return (f"download them once where the hub is reachable ({command}, or this build there) "
            "into this cache, or point HF_HOME / HF_HUB_CACHE at a cache that holds them")


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples -> lists), so that a config used locally is
    the very one a served copy reads from its lock."""
    return json.loads(json.dumps(value))
