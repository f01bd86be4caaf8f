"""towhee_rt.triton.bulletins: the security bulletins as data, the version map, the policy."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from towhee_rt.errors import ConfigError
from towhee_rt.triton import bulletins
from towhee_rt.triton.bulletins import (BULLETINS, EMBEDDED_TRITON_VERSION,
                                        VulnerableBaseError, check_base, newest_safe_release,
                                        ngc_release, open_bulletins, parse_release,
                                        triton_version)

DESIGN_IDS = ["5687", "5691", "5723", "5734", "5790", "5816", "5828", "5848", "5853", "5865",
              "5875"]


def test_the_data_holds_every_bulletin_once_oldest_first_with_well_formed_fields():
    assert [b.id for b in BULLETINS] == DESIGN_IDS
    fixed = [parse_release(b.fixed_in) for b in BULLETINS]
    assert fixed == sorted(fixed, key=lambda r: tuple(map(int, r.split("."))))
    for b in BULLETINS:
        assert all(re.fullmatch(r"CVE-20\d\d-\d{4,6}", c) for c in b.cves), b
        assert b.cvss_max is None or 0 < b.cvss_max <= 10
        assert b.url.endswith(f"a_id={b.id}") or b.url.endswith(f"/{b.id}")
        line = b.describe()
        assert b.id in line and b.fixed_in in line
        # No invented ids: a bulletin without CVEs says where to find them.
        assert b.cves or bulletins.CVES_UNKNOWN in line


def test_the_facts_from_the_design_notes():
    by_id = {b.id: b for b in BULLETINS}
    assert set(by_id["5687"].cves) == {"CVE-2025-23310", "CVE-2025-23311", "CVE-2025-23319",
                                       "CVE-2025-23320", "CVE-2025-23334"}
    assert by_id["5687"].fixed_in == "25.07"
    assert by_id["5828"].cves == ("CVE-2026-24206", "CVE-2026-24207")
    assert by_id["5828"].cvss_max == 9.8 and by_id["5828"].auth_bypass
    assert by_id["5853"].cves == ("CVE-2026-47481",) and by_id["5853"].auth_bypass
    assert by_id["5865"].cvss_max == 9.8
    assert [b.id for b in BULLETINS if b.auth_bypass] == ["5828", "5853"]


@pytest.mark.parametrize("release, version", [
    ("24.10", "2.51"), ("25.07", "2.59"), ("25.08", "2.60"), ("25.12", "2.64"),
    ("26.01", "2.65"), ("26.03", "2.67"), ("26.07", "2.71"), ("26.09", "2.73"),
])
def test_version_map_both_ways(release, version):
    assert triton_version(release) == version
    assert ngc_release(version) == release
    assert ngc_release(version + ".0") == release


def test_the_monthly_rule_holds_over_years_and_is_its_own_inverse():
    for n in range(0, 40):
        version = f"2.{59 + n}"
        release = ngc_release(version)
        year, month = map(int, release.split("."))
        assert (year * 12 + month) - (25 * 12 + 7) == n
        assert triton_version(release) == version


def test_embedded_version_is_2_51_and_unknown_releases_are_refused():
    assert EMBEDDED_TRITON_VERSION == "2.51" == triton_version("24.10")
    with pytest.raises(ConfigError, match="not recorded here"):
        triton_version("25.03")
    with pytest.raises(ConfigError, match="not recorded here"):
        ngc_release("2.55")
    with pytest.raises(ConfigError, match="not a Triton server version"):
        ngc_release("25.07")


@pytest.mark.parametrize("tag", ["25.07", "25.07-py3", "nvcr.io/nvidia/tritonserver:25.07-py3",
                                 " 25.07-py3-sdk "])
def test_parse_release_accepts_the_usual_spellings(tag):
    assert parse_release(tag) == "25.07"


@pytest.mark.parametrize("tag", ["25.7", "2025.07", "25.13", "latest", ""])
def test_parse_release_refuses_the_rest_saying_what_it_expects(tag):
    with pytest.raises(ConfigError, match="expected 'YY.MM'"):
        parse_release(tag)


def test_open_bulletins_by_release():
    assert [b.id for b in open_bulletins("24.10")] == DESIGN_IDS
    assert [b.id for b in open_bulletins("25.07")] == DESIGN_IDS[1:]
    assert [b.id for b in open_bulletins("25.10")] == DESIGN_IDS[4:]
    assert [b.id for b in open_bulletins("26.03")] == ["5848", "5853", "5865", "5875"]
    assert [b.id for b in open_bulletins("26.06")] == ["5875"]
    assert open_bulletins("26.07") == [] and open_bulletins("27.01") == []


def test_newest_safe_release():
    assert newest_safe_release() == "26.07"
    assert open_bulletins(newest_safe_release()) == []


def test_check_base_passes_a_patched_release_silently():
    assert check_base("26.07", explicit=False) == []
    assert check_base("nvcr.io/nvidia/tritonserver:26.09-py3", explicit=True) == []


def test_check_base_refuses_an_older_release_unless_asked_for_by_name():
    with pytest.raises(VulnerableBaseError) as refused:
        check_base("25.10", explicit=False)
    message = str(refused.value)
    assert isinstance(refused.value, ConfigError)
    for needle in ("5790", "5828", "CVE-2026-24206", "CVE-2026-47481", "5875",
                   "26.07 or later", "triton_tag='25.10'", "Triton 2.62"):
        assert needle in message, needle
    assert "5734" not in message  # fixed in 25.10 itself


def test_check_base_explicit_returns_warnings_and_the_auth_bypass_one():
    warnings = check_base("26.03-py3", explicit=True)
    assert len(warnings) == 2
    assert "5848" in warnings[0] and "5828" not in warnings[0]
    assert "5853" in warnings[1] and "bypassed" in warnings[1]
    # After 26.05 the keys hold again: no bypass warning, only the open bulletins.
    later = check_base("26.05", explicit=True)
    assert len(later) == 1 and "5865" in later[0] and "5875" in later[0]


def test_the_embedded_server_is_refused_as_an_image_base():
    with pytest.raises(VulnerableBaseError, match="Triton 2.51"):
        check_base("24.10", explicit=False)


def test_the_module_imports_only_the_standard_library_and_towhee_rt_errors():
    tree = ast.parse(Path(bulletins.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.module == "errors", node.module
                continue
            names = [node.module.split(".")[0]]
        else:
            continue
        for name in names:
            assert name in sys.stdlib_module_names, name
