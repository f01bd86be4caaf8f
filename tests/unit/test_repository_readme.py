"""The repository's README.md: every pipeline in the repository, and commands that work."""
import re
import subprocess
import sys

import towhee_rt as towhee

from ..user_ops import text_ops  # noqa: F401 - registers test_text.*


def _sections(readme):
    return re.findall(r"^## Pipeline `([^`]+)`$", readme, re.M)


def test_readme_describes_every_pipeline_in_the_repository(tmp_path):
    root = tmp_path / "repo"
    towhee.build_model_repo(towhee.dummy_input().image_decode.cv2_rgb().as_function(), root,
                            model_name="decode")
    assert _sections((root / "README.md").read_text()) == ["decode"]
    towhee.build_model_repo(towhee.dummy_input().test_text.clean().as_function(), root,
                            model_name="clean", overwrite=True)
    readme = (root / "README.md").read_text()
    assert _sections(readme) == ["clean", "decode"]  # the first pipeline is still described
    assert "Pipelines served from here (clients call each by its ensemble's name):\n" \
           "`clean`, `decode`." in readme
    assert "| `decode_0_image_decode_cv2_rgb` | `image_decode.cv2_rgb` | - | 1 x CPU | off |" \
        in readme
    assert "| `clean_0_test_text_clean` | `test_text.clean` | - |" in readme
    assert ("Clients call the ensemble `decode`; it takes `image` (TYPE_STRING) and returns "
            "`image` (TYPE_UINT8).") in readme  # not the shapes the padded image travels with
    assert "SHIPPED" not in readme and "$" not in readme.replace("$ADMIN_KEY", "").replace(
        "$PWD", "").replace("$(python3", "")
    # Rebuilding one pipeline replaces its section only.
    towhee.build_model_repo(towhee.dummy_input().image_decode.cv2_rgb().as_function(), root,
                            model_name="decode", overwrite=True)
    assert _sections((root / "README.md").read_text()) == ["clean", "decode"]


def test_readme_debug_commands_use_real_flags(tmp_path):
    root = tmp_path / "repo"
    towhee.build_model_repo(towhee.dummy_input().image_decode.cv2_rgb().as_function(), root)
    readme = (root / "README.md").read_text()
    debug = readme[readme.index("## Debug it"):]
    host = re.search(r"^ +(towhee-rt serve \. .*)$", debug, re.M).group(1)
    assert "--log-verbose 1" in host
    usage = subprocess.run([sys.executable, "-m", "towhee_rt", "serve", "--help"],
                           capture_output=True, text=True, timeout=120).stdout
    for flag in re.findall(r"--[a-z-]+", host):
        assert flag in usage, f"the README's host command uses {flag}, which serve lacks"
    assert "--model-repository=/workspace/models" in debug  # in the container
    assert "--log-verbose=1" in debug
