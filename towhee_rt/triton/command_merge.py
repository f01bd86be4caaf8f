# SHIPPED: copied verbatim into the image as towhee_rt_supervisor/command_merge.py
# (towhee_rt.shipped.SUPERVISOR). Standard library only; never towhee_rt.
"""towhee_rt's tritonserver command merged with one a user gives the image.

Towhee's guide runs ``docker run ... IMAGE tritonserver --model-repository=/workspace/models
--grpc-port=8001``. The image's entrypoint takes that trailing command and runs
:func:`merge_command` of towhee_rt's own command (its flags, keys and shared-memory sizes) and
the user's: every flag the user gives replaces towhee_rt's flags of the same name, in their
place (all of them: ``--model-repository`` twice gives two repositories, none of towhee_rt's;
a ``--backend-config`` replaces the one for the same backend and setting), flags towhee_rt does
not set are added at the end, and the user's binary path is kept: the guide's command with
towhee_rt's own values gives exactly towhee_rt's command. So the user's repository, ports,
addresses and log flags win, while the flags that carry towhee_rt's protections
(:data:`PROTECTED`) are refused with :class:`RefusedFlag`: the keys come only from
``TOWHEE_RT_API_KEY``/``TOWHEE_RT_ADMIN_KEY`` (or ``_FILE``), so a user's
``--http-restricted-api`` could only replace or drop them.

tritonserver reads its options with ``getopt_long``, which takes ``--name=value`` and
``--name value`` and any unambiguous abbreviation of a name: both forms are read, an
abbreviation of one of towhee_rt's flags is read as that flag, and an abbreviation of a
protected flag is refused (write it out).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

#: The tritonserver flags that towhee_rt's protections rest on, and why each is refused.
PROTECTED: Dict[str, str] = {
    "--http-restricted-api": "the API keys are set by towhee_rt from TOWHEE_RT_API_KEY and "
                             "TOWHEE_RT_ADMIN_KEY (or their _FILE variants); a flag here would "
                             "replace or reopen them",
    "--grpc-restricted-protocol": "the API keys are set by towhee_rt from TOWHEE_RT_API_KEY and "
                                  "TOWHEE_RT_ADMIN_KEY (or their _FILE variants); a flag here "
                                  "would replace or reopen them",
    "--allow-sagemaker": "the SageMaker endpoint (which loads and unloads models) is outside "
                         "the key restrictions",
    "--allow-vertex-ai": "the Vertex AI endpoint is outside the key restrictions",
    "--model-control-mode": "the supervisor reloads a model whose stub died through explicit "
                            "model control",
    "--allow-http": "the supervisor watches and reloads the models over HTTP",
    "--http-header-forward-pattern": "a pattern matching the key headers would hand the keys "
                                     "to the model code",
    "--grpc-header-forward-pattern": "a pattern matching the key headers would hand the keys "
                                     "to the model code",
}
_FALSE = {"false", "off", "0"}
_TRUE = {"true", "on", "1"}
#: Values of a protected flag that leave the protection in place (accepted; the user's wins).
ALLOWED_VALUES = {"--allow-sagemaker": _FALSE, "--allow-vertex-ai": _FALSE,
                  "--model-control-mode": {"explicit"}, "--allow-http": _TRUE}
#: The headers that carry the keys (towhee_rt.triton.flags; over gRPC with Triton's prefix).
KEY_HEADERS = ("towhee-api-key", "towhee-admin-key", "triton-grpc-protocol-towhee-api-key",
               "triton-grpc-protocol-towhee-admin-key")
#: Other names of the same flag.
ALIASES = {"--model-store": "--model-repository"}
#: Flags without a value (``--name value`` does not apply to them).
NO_VALUE = {"--disable-auto-complete-config", "--help", "--version"}
#: What the refusal exits with (the entrypoint's usage error).
REFUSED_EXIT_CODE = 2


class RefusedFlag(ValueError):
    """A user's flag that would undo one of towhee_rt's protections."""


def _name(word: str) -> str:
    return word.split("=", 1)[0]


def _resolve(name: str, known: Sequence[str]) -> str:
    """``name`` as tritonserver's ``getopt_long`` reads it, as far as ``known`` tells."""
    name = ALIASES.get(name, name)
    if name in known or name in PROTECTED:
        return name
    protected = [p for p in PROTECTED if len(name) > 2 and p.startswith(name)]
    if protected:
        raise RefusedFlag(f"{name} abbreviates {' or '.join(protected)}, which towhee_rt sets "
                          f"itself ({PROTECTED[protected[0]]})")
    matches = {ALIASES.get(k, k) for k in known if len(name) > 2 and k.startswith(name)}
    return matches.pop() if len(matches) == 1 else name


def _parse(argv: Sequence[str], known: Sequence[str]) -> List[Tuple[Optional[str], List[str]]]:
    """``argv`` as (flag name or None, its words); ``--name value`` pairs are kept together
    for the names in ``known`` and :data:`PROTECTED`."""
    items: List[Tuple[Optional[str], List[str]]] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("--") or word == "--":
            items.append((None, [word]))
            i += 1
            continue
        name = _resolve(_name(word), known)
        words = [word]
        if "=" not in word and name not in NO_VALUE and (name in known or name in PROTECTED) \
                and i + 1 < len(argv):
            words.append(argv[i + 1])
            i += 1
        items.append((name, words))
        i += 1
    return items


def _value(words: List[str]) -> str:
    return words[0].split("=", 1)[1] if "=" in words[0] else (words[1] if len(words) > 1 else "")


def _key(name: str, words: List[str]) -> Tuple[str, str]:
    """What a later flag of the same kind replaces: the name, and for ``--backend-config``
    also the backend and setting (``python,shm-default-byte-size``)."""
    if name == "--backend-config":
        return name, _value(words).split("=", 1)[0]
    return name, ""


def check_protected(name: str, words: List[str]) -> None:
    """Raise :class:`RefusedFlag` when the flag ``name`` given as ``words`` would undo a
    protection (:data:`PROTECTED`)."""
    if name not in PROTECTED:
        return
    value = _value(words)
    if value.strip().lower() in ALLOWED_VALUES.get(name, ()):
        return
    if name.endswith("header-forward-pattern"):
        try:
            pattern = re.compile(value, re.IGNORECASE)
        except re.error:
            pattern = None
        if pattern is not None and not any(pattern.search(h) for h in KEY_HEADERS):
            return
    shown = " ".join(words) if "restricted" not in name else name + "=..."
    raise RefusedFlag(f"refusing {shown}: {PROTECTED[name]}. Leave it out (towhee_rt's "
                      "entrypoint sets it), or run tritonserver without towhee_rt's "
                      "protections explicitly: docker run --entrypoint "
                      "/opt/nvidia/nvidia_entrypoint.sh IMAGE tritonserver ...")


def merge_command(base: Sequence[str], user: Sequence[str]) -> List[str]:
    """towhee_rt's tritonserver command ``base`` (binary, flags) with the user's command
    ``user`` (``tritonserver FLAGS...``, or flags only) merged in, as the module describes.

    >>> merge_command(["tritonserver", "--model-repository=/workspace/models",
    ...                "--grpc-port=8001", "--strict-readiness=true"],
    ...               ["tritonserver", "--model-repository=/data", "--grpc-port", "9001"])
    ['tritonserver', '--model-repository=/data', '--grpc-port', '9001', '--strict-readiness=true']

    Raises :class:`RefusedFlag` for a flag in :data:`PROTECTED` (or an abbreviation of one).
    """
    if not user:
        return list(base)
    binary, base_flags = base[0], list(base[1:])
    user = list(user)
    if not user[0].startswith("-"):
        binary, user = user[0], user[1:]
    known = sorted({ALIASES.get(_name(w), _name(w)) for w in base_flags if w.startswith("--")})
    user_items = _parse(user, known)
    for name, words in user_items:
        if name:
            check_protected(name, words)
    by_key: Dict[Tuple[str, str], List[str]] = {}  # the user's flags, by what they replace
    placed = set()
    added: List[str] = []
    for name, words in user_items:
        if name:
            by_key.setdefault(_key(name, words), []).extend(words)
        else:
            added += words
    merged = [binary]
    for name, words in _parse(base_flags, known):
        key = _key(name, words) if name else None
        if key not in by_key:
            merged += words
        elif key not in placed:
            merged += by_key[key]  # where towhee_rt's flag of that kind was
            placed.add(key)
    for key, words in by_key.items():
        if key not in placed:
            merged += words
    return merged + added
