"""Every Python block of README.md runs, in order, in one namespace (as a reader would)."""
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


def test_readme_python_blocks_run(monkeypatch):
    monkeypatch.chdir(README.parent)  # the README's paths are relative to the repository root
    namespace = {"__name__": "__readme__"}
    for number, block in enumerate(BLOCKS, start=1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"README python block {number} failed: {type(exc).__name__}: {exc}\n"
                        f"{block}")
    assert namespace["vec"].shape == (2048,)
    assert float(abs(namespace["res"][0] - namespace["vec"]).max()) <= 1e-5 * float(
        abs(namespace["vec"]).max())
    assert os.path.isfile("/tmp/towhee_rt_readme/docker/Dockerfile")
