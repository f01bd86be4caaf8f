"""The allocator settings every launch gives tritonserver and its stubs
(bench/results/memory.md): on this host (launch_plan.host_plan) and in the image (its
entrypoint), with the opt-out TOWHEE_RT_ALLOCATOR=glibc and a user's own MALLOC_* / LD_PRELOAD
winning."""
import os
import shutil
import subprocess
import textwrap

import pytest

from towhee_rt.errors import ServerError
from towhee_rt.triton import launch_plan
from towhee_rt.triton.launch_plan import (ALLOCATOR_ENV, ALLOCATOR_SWITCH, allocator_env,
                                          host_plan, server_environment)

from .entrypoint_stand_in import rendered_entrypoint

PORTS = {"gRPC": 18001, "HTTP": 18000, "metrics": 18002}
KEYS = {"api_key": None, "admin_key": "admin-key-for-the-test"}
#: What the settings are, written out: a change to them is a change to this test too, and to
#: bench/results/memory.md, which measured them.
MEASURED = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _clean_environ(monkeypatch):
    for name in launch_plan.ALLOCATOR_ENV_NAMES + (ALLOCATOR_SWITCH,):
        monkeypatch.delenv(name, raising=False)


def test_the_settings_are_the_measured_ones():
    assert ALLOCATOR_ENV == MEASURED


def test_host_plan_gives_tritonserver_the_settings(monkeypatch, tmp_path):
    _clean_environ(monkeypatch)
    env = host_plan(tmp_path, host="127.0.0.1", ports=PORTS, keys=KEYS).env
    assert {k: env.get(k) for k in MEASURED} == MEASURED
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "LD_LIBRARY_PATH" in env  # the embedded server's environment is still there


@pytest.mark.parametrize("where", ["serve_env", "environ"])
def test_opt_out_leaves_glibc_defaults(monkeypatch, tmp_path, where):
    _clean_environ(monkeypatch)
    extra = {ALLOCATOR_SWITCH: "glibc"}
    if where == "environ":
        monkeypatch.setenv(ALLOCATOR_SWITCH, "glibc")
        extra = {}
    env = host_plan(tmp_path, host="127.0.0.1", ports=PORTS, keys=KEYS, env=extra).env
    assert not any(name in env for name in MEASURED)


@pytest.mark.parametrize("own", [{"MALLOC_ARENA_MAX": "8"}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                 {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}])
def test_a_users_own_allocator_setting_replaces_all_of_ours(monkeypatch, tmp_path, own):
    _clean_environ(monkeypatch)
    env = host_plan(tmp_path, host="127.0.0.1", ports=PORTS, keys=KEYS, env=own).env
    assert {k: env.get(k) for k in own} == own
    assert not any(name in env for name in MEASURED if name not in own)
    monkeypatch.setenv(*next(iter(own.items())))  # the same from the serving process's env
    env = host_plan(tmp_path, host="127.0.0.1", ports=PORTS, keys=KEYS).env
    assert not any(name in env for name in MEASURED if name not in own)


def test_an_unknown_choice_is_refused_naming_the_variable():
    with pytest.raises(ServerError, match=r"TOWHEE_RT_ALLOCATOR='jemalloc'.*tuned, glibc"):
        allocator_env({ALLOCATOR_SWITCH: "jemalloc"})
    assert allocator_env({ALLOCATOR_SWITCH: "tuned"}) == MEASURED
    assert allocator_env({ALLOCATOR_SWITCH: ""}) == MEASURED  # empty: the default


def test_server_environment_puts_env_over_base_and_settings_last():
    env = server_environment({"A": "base", "B": "base"}, {"B": "env"})
    assert env == {"A": "base", "B": "env", "PYTHONDONTWRITEBYTECODE": "1", **MEASURED}


# ------------------------------------------------------------------ the image's entrypoint
BASH = shutil.which("bash")
_PRINT_ENV = textwrap.dedent("""\
    #!/bin/sh
    # Stands in for tritonserver: the allocator variables it was given.
    env | grep -E '^(MALLOC_|LD_PRELOAD=|GLIBC_TUNABLES=|TOWHEE_RT_ALLOCATOR=)' | sort
""")


@pytest.fixture(scope="module")
def entrypoint(tmp_path_factory):
    return rendered_entrypoint(tmp_path_factory.mktemp("entrypoint"), _PRINT_ENV)


def _container_env(entrypoint, **given):
    script, path = entrypoint
    names = launch_plan.ALLOCATOR_ENV_NAMES + (ALLOCATOR_SWITCH,)
    clean = {k: v for k, v in os.environ.items() if k not in names}
    result = subprocess.run([BASH, str(script)], env={**clean, "PATH": path, **given},
                            capture_output=True, text=True, timeout=30)
    return result, dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_entrypoint_gives_tritonserver_the_same_settings(entrypoint):
    result, env = _container_env(entrypoint)
    assert env == MEASURED, result.stderr


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_entrypoint_opt_out_and_own_settings(entrypoint):
    assert _container_env(entrypoint, TOWHEE_RT_ALLOCATOR="glibc")[1] == {}
    own = {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}
    assert _container_env(entrypoint, **own)[1] == own
    own = {"MALLOC_ARENA_MAX": "8"}
    assert _container_env(entrypoint, **own)[1] == own


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_entrypoint_refuses_an_unknown_choice_without_starting(entrypoint):
    result, env = _container_env(entrypoint, TOWHEE_RT_ALLOCATOR="mimalloc")
    assert result.returncode == 64 and env == {}
    assert "TOWHEE_RT_ALLOCATOR=mimalloc: expected tuned or glibc" in result.stderr
