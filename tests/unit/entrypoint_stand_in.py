"""The image's entrypoint rendered into a folder, with a stand-in ``tritonserver`` on its PATH,
for the tests that run the script without a container (test_entrypoint, test_allocator_env)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

from towhee_rt.triton import docker


def rendered_entrypoint(root: Path, tritonserver_script: str) -> Tuple[Path, str]:
    """The entrypoint script for pipeline ``pipeline`` in ``root`` (supervisor beside it) and a
    PATH whose ``tritonserver`` is ``tritonserver_script`` (a shell script's text)."""
    script = root / docker.ENTRYPOINT_NAME
    script.write_text(docker.render_entrypoint("pipeline"))
    docker.write_supervisor(root)
    fake = root / "bin" / "tritonserver"
    fake.parent.mkdir()
    fake.write_text(tritonserver_script)
    fake.chmod(0o755)
    return script, f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"
