"""NVIDIA's Triton Inference Server security bulletins (2025-2026) as data, and the policy that
picks a base release from them.

The tritonserver embedded in ``nvidia-pytriton`` 0.7.0 is Triton :data:`EMBEDDED_TRITON_VERSION`
(NGC 24.10). It predates every bulletin below, and its restricted-API switches
(``--http-restricted-api``/``--grpc-restricted-protocol``, which carry towhee_rt's API and
admin keys) have known authentication bypasses (bulletins 5828 and 5853, fixed in 26.03 and
26.05): the keys are no security boundary there. Use it for development on loopback only;
anything reachable from a network should run a release that :func:`open_bulletins` finds
nothing open in (:func:`newest_safe_release` or later).

A release is an NGC tag ``'YY.MM'`` (``nvcr.io/nvidia/tritonserver:<YY.MM>-py3``); a Triton
version is ``'2.N'``. Releases are monthly and from 25.07 on each one is the next minor
version (:func:`triton_version`, :func:`ngc_release`). Standard library only.

Sources: the bulletin list, CVE ids, CVSS scores and fixed releases are those recorded in the
project's design notes (DESIGN.md, "Triton security bulletins, 2025-2026"); where they give no
CVE id, :attr:`Bulletin.cves` is empty and the text says to read the bulletin. Nothing here is
fetched at run time; when NVIDIA publishes a new bulletin, add it to :data:`BULLETINS`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import List, Optional, Tuple

from ..errors import ConfigError

#: The Triton version of the tritonserver embedded in nvidia-pytriton 0.7.0 (NGC 24.10).
EMBEDDED_TRITON_VERSION = "2.51"
#: Where NVIDIA publishes a bulletin (``a_id`` is the bulletin id).
BULLETIN_URL = "https://nvidia.custhelp.com/app/answers/detail/a_id/{id}"
#: Said of a bulletin whose CVE ids are not recorded here.
CVES_UNKNOWN = "CVE ids: see the bulletin"


@dataclasses.dataclass(frozen=True)
class Bulletin:
    """One NVIDIA security bulletin for Triton Inference Server.

    ``fixed_in`` is the first NGC release with every fix it lists; ``cves`` is empty when the
    ids are not recorded here (read the bulletin); ``cvss_max`` is None when unknown here;
    ``auth_bypass`` marks bulletins that defeat the restricted-API header keys.
    """

    id: str
    fixed_in: str
    summary: str
    cves: Tuple[str, ...] = ()
    cvss_max: Optional[float] = None
    auth_bypass: bool = False

    @property
    def url(self) -> str:
        """The bulletin's page on NVIDIA's product-security site."""
        return BULLETIN_URL.format(id=self.id)

    def describe(self) -> str:
        """One line: id, CVEs (or where to find them), CVSS, fixed release, summary."""
        cves = ", ".join(self.cves) if self.cves else CVES_UNKNOWN
        cvss = f", CVSS {self.cvss_max}" if self.cvss_max is not None else ""
        return (f"bulletin {self.id} ({cves}{cvss}; fixed in {self.fixed_in}): "
                f"{self.summary}")


_SEE = "Triton Inference Server security fixes; " + CVES_UNKNOWN
#: Every bulletin, oldest first.
BULLETINS: Tuple[Bulletin, ...] = (
    Bulletin("5687", "25.07",
             "a malformed chunked HTTP request crashes the server (CVE-2025-23310/23311); "
             "the Python backend's shared-memory chain (CVE-2025-23319/23320/23334)",
             cves=("CVE-2025-23310", "CVE-2025-23311", "CVE-2025-23319", "CVE-2025-23320",
                   "CVE-2025-23334")),
    Bulletin("5691", "25.08", _SEE),
    Bulletin("5723", "25.09", _SEE),
    Bulletin("5734", "25.10", _SEE),
    Bulletin("5790", "26.01", _SEE),
    Bulletin("5816", "26.02", _SEE),
    Bulletin("5828", "26.03", "authentication bypass of the restricted APIs",
             cves=("CVE-2026-24206", "CVE-2026-24207"), cvss_max=9.8, auth_bypass=True),
    Bulletin("5848", "26.04", _SEE),
    Bulletin("5853", "26.05", "another authentication bypass of the restricted APIs",
             cves=("CVE-2026-47481",), auth_bypass=True),
    Bulletin("5865", "26.06", _SEE, cvss_max=9.8),
    Bulletin("5875", "26.07", _SEE),
)

#: Releases whose Triton version does not follow the monthly rule (before 25.07).
_KNOWN_VERSIONS = {"24.10": "2.51"}
#: The anchor of the monthly rule: release 25.07 is Triton 2.59, and each month adds one.
_ANCHOR_RELEASE, _ANCHOR_MINOR = "25.07", 59

_RELEASE = re.compile(r"(?:.*:)?(\d{2})\.(\d{2})(?:-[\w.-]+)?")


class VulnerableBaseError(ConfigError):
    """A base release with open security bulletins was chosen without asking for it."""


def parse_release(tag: str) -> str:
    """The ``'YY.MM'`` release of an NGC tag: ``'25.07'``, ``'25.07-py3'`` or a full image
    name ``'nvcr.io/nvidia/tritonserver:25.07-py3'``. Raises :class:`ConfigError` otherwise."""
    match = _RELEASE.fullmatch(str(tag).strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ConfigError(f"not an NGC tritonserver release: {tag!r}; expected 'YY.MM' such "
                          f"as {newest_safe_release()!r} (or 'YY.MM-py3', or "
                          "'nvcr.io/nvidia/tritonserver:YY.MM-py3')")
    return f"{match.group(1)}.{match.group(2)}"


def _months(release: str) -> int:
    year, month = parse_release(release).split(".")
    return int(year) * 12 + int(month) - 1


def _release_of_months(months: int) -> str:
    return f"{months // 12:02d}.{months % 12 + 1:02d}"


def triton_version(release: str) -> str:
    """The Triton server version (``'2.N'``) of an NGC release: ``'25.07'`` -> ``'2.59'``,
    ``'26.07'`` -> ``'2.71'`` (one minor version a month from 25.07), and ``'24.10'`` ->
    ``'2.51'`` (the embedded one). Raises :class:`ConfigError` for releases before 25.07 that
    are not recorded here."""
    release = parse_release(release)
    if release in _KNOWN_VERSIONS:
        return _KNOWN_VERSIONS[release]
    offset = _months(release) - _months(_ANCHOR_RELEASE)
    if offset < 0:
        raise ConfigError(f"the Triton version of release {release} is not recorded here "
                          f"(known: {', '.join(sorted(_KNOWN_VERSIONS))} and "
                          f"{_ANCHOR_RELEASE} onwards)")
    return f"2.{_ANCHOR_MINOR + offset}"


def ngc_release(version: str) -> str:
    """The NGC release of a Triton version: ``'2.67'`` or ``'2.67.0'`` -> ``'26.03'``,
    ``'2.51'`` -> ``'24.10'``; the inverse of :func:`triton_version`. Raises
    :class:`ConfigError` for versions not recorded here."""
    match = re.fullmatch(r"2\.(\d+)(?:\.\d+)?", str(version).strip())
    if not match:
        raise ConfigError(f"not a Triton server version: {version!r}; expected '2.N' such as "
                          f"{triton_version(newest_safe_release())!r}")
    minor = int(match.group(1))
    for release, known in _KNOWN_VERSIONS.items():
        if known == f"2.{minor}":
            return release
    if minor < _ANCHOR_MINOR:
        raise ConfigError(f"the NGC release of Triton 2.{minor} is not recorded here (known: "
                          f"{', '.join(sorted(_KNOWN_VERSIONS.values()))} and "
                          f"2.{_ANCHOR_MINOR} onwards)")
    return _release_of_months(_months(_ANCHOR_RELEASE) + minor - _ANCHOR_MINOR)


def open_bulletins(release: str) -> List[Bulletin]:
    """The bulletins whose fixes ``release`` (an NGC tag, see :func:`parse_release`) lacks,
    oldest first; empty for :func:`newest_safe_release` and later."""
    months = _months(release)
    return [b for b in BULLETINS if months < _months(b.fixed_in)]


def newest_safe_release() -> str:
    """The newest release in :data:`BULLETINS`' ``fixed_in``: the oldest one with every fix
    recorded here (``'26.07'``)."""
    return max((b.fixed_in for b in BULLETINS), key=_months)


def check_base(tag: str, explicit: bool) -> List[str]:
    """Whether ``tag`` may be the base of a served image: the warnings to log (empty for a
    release with nothing open).

    A release with open bulletins is refused with :class:`VulnerableBaseError` (naming the
    bulletins, their CVEs and how to proceed) unless ``explicit`` is true, i.e. the user named
    that exact release (``triton_tag=``); then the same facts come back as warnings. Releases
    before 26.05 also get a warning that the API/admin keys are no security boundary.
    """
    release = parse_release(tag)
    still_open = open_bulletins(release)
    if not still_open:
        return []
    safe = newest_safe_release()
    bypass = [b for b in still_open if b.auth_bypass]
    lines = "; ".join(b.describe() for b in still_open)
    head = (f"tritonserver {release} (Triton {_version_or_unknown(release)}) lacks the fixes "
            f"of {len(still_open)} NVIDIA security bulletin(s): {lines}")
    if not explicit:
        raise VulnerableBaseError(
            f"{head}. Use {safe} or later (the default), or, to build on {release} anyway "
            f"knowing the risk, name it explicitly: triton_tag={release!r}")
    warnings = [f"{head}. Do not expose it to untrusted networks; {safe} or later has them."]
    if bypass:
        warnings.append(
            f"on tritonserver {release} the API and admin keys (Triton's restricted-API "
            f"headers) can be bypassed (bulletin(s) {', '.join(b.id for b in bypass)}): put "
            "an authenticating proxy in front, or use a release with the fixes")
    return warnings


def _version_or_unknown(release: str) -> str:
    try:
        return triton_version(release)
    except ConfigError:
        return "version not recorded here"
