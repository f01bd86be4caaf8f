"""A Python environment that cannot import towhee_rt, for the tests of served user operators.

A venv (no pip) whose only extra path is this environment's site-packages, added by a .pth
file: the .pth files inside that directory, among them towhee_rt's editable install, are not
processed, so numpy, torch, onnxruntime... import and towhee_rt does not (from a working
directory that does not hold towhee_rt/).
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path


def python_without_towhee_rt(path: Path) -> Path:
    """Create the venv at ``path`` and return its ``bin/`` (put it first on PATH)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        text=True).strip()
    Path(site, "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    check = subprocess.run([str(python), "-c", "import towhee_rt"], cwd=path,
                           capture_output=True, text=True)
    assert check.returncode != 0 and "No module named 'towhee_rt'" in check.stderr, (
        "towhee_rt is importable in the venv meant to lack it: " + check.stderr[-500:])
    return path / "bin"
