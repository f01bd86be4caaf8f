"""bench/gpu.sh: skipped cleanly without a GPU; with one, every step is timed and reported.

``nvidia-smi`` is put on PATH as a small script: one that fails plays a machine without a GPU
(whatever this machine has), one that answers plays a GPU machine for the dry run and for the
report's mechanics (in a scratch copy, where every step fails fast and nothing is installed).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.sh"
CHECK_NAMES = ("install:", "gpu tests:", "clip bench:")


def _nvidia_smi(folder: Path, works: bool) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho 'GPU 0: Stand-in GPU (UUID: GPU-0)'\n" if works
                    else "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    tool.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def _run(args, env, cwd=ROOT, timeout=30):
    start = time.monotonic()
    result = subprocess.run(["bash", str(args[0]), *args[1:]], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - start


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.parametrize("args", [[], ["--dry-run"]])
def test_without_a_gpu_it_lists_the_checks_and_exits_0_quickly_installing_nothing(tmp_path,
                                                                                  args):
    report = ROOT / "bench" / "results" / "gpu.md"
    before = report.stat().st_mtime if report.exists() else None
    venv_stamp = ROOT / ".venv" / ".towhee_rt-installed"
    stamp_before = venv_stamp.stat().st_mtime if venv_stamp.exists() else None
    result, seconds = _run([SCRIPT, *args], _nvidia_smi(tmp_path / "bin", works=False))
    assert result.returncode == 0, result.stderr
    assert seconds < 5
    assert "skipped cleanly" in result.stdout
    for name in CHECK_NAMES:
        assert name in result.stdout
    assert (report.stat().st_mtime if report.exists() else None) == before
    assert (venv_stamp.stat().st_mtime if venv_stamp.exists() else None) == stamp_before


def test_dry_run_on_a_gpu_machine_says_what_it_would_run(tmp_path):
    result, seconds = _run([SCRIPT, "--dry-run"], _nvidia_smi(tmp_path / "bin", works=True))
    assert result.returncode == 0 and seconds < 5
    assert "GPU found (GPU 0: Stand-in GPU" in result.stdout
    assert all(name in result.stdout for name in CHECK_NAMES)


def _scratch_tree(tmp_path):
    """A tree holding only bench/gpu.sh and a .venv whose python is this one: no project to
    install, no tests, no bench, so each step fails fast and the mechanics are what is tested."""
    tree = tmp_path / "tree"
    (tree / "bench").mkdir(parents=True)
    shutil.copy(SCRIPT, tree / "bench" / "gpu.sh")
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return tree


def test_an_unknown_argument_is_refused():
    result, _ = _run([SCRIPT, "--bogus"], dict(os.environ))
    assert result.returncode == 2 and "--dry-run" in result.stderr


def test_on_a_gpu_machine_every_step_gets_a_row_and_the_report_says_what_did_not_run(tmp_path):
    # A scratch tree: the script, and a .venv whose python is this one. There is no project to
    # install, no tests and no bench there, so each step fails fast: the mechanics are tested.
    tree = _scratch_tree(tmp_path)
    env = {**_nvidia_smi(tmp_path / "bin", works=True), "GPU_SH_BUDGET": "120",
           "PIP_NO_INDEX": "1"}
    result, seconds = _run([tree / "bench" / "gpu.sh"], env, cwd=tmp_path, timeout=150)
    assert result.returncode == 1, result.stdout + result.stderr  # the steps failed
    report = (tree / "bench" / "results" / "gpu.md").read_text()
    for step in ("install", "gpu-tests", "clip-bench"):
        assert f"| {step} | fail (exit" in report, report
        assert (tree / "bench" / "results" / "gpu-logs" / f"{step}.log").exists()
    assert "GPU: `" in report and "Stand-in GPU" in report
    assert "## Versions" in report and "- numpy " in report
    assert "## Could not run" in report and "bench/run.py has none" in report
    assert "the gpu extra did not install" in report


def test_a_budget_too_small_skips_steps_and_says_so(tmp_path):
    tree = _scratch_tree(tmp_path)
    env = {**_nvidia_smi(tmp_path / "bin", works=True), "GPU_SH_BUDGET": "15"}
    result, seconds = _run([tree / "bench" / "gpu.sh"], env, cwd=tmp_path)
    assert result.returncode == 0 and seconds < 20, result.stdout + result.stderr
    report = (tree / "bench" / "results" / "gpu.md").read_text()
    assert "| install | skipped | 0 | out of time" in report
    assert "clip-bench: out of time (GPU_SH_BUDGET=15s)" in report
