"""The wheel ships backends/ and model_repo_templates/ inside the package (non-editable install)."""
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import pathlib, sys, tempfile
    import towhee_rt, towhee_rt.backends, towhee_rt.model_repo_templates
    root = pathlib.Path(sys.argv[1]).resolve()
    for module in (towhee_rt, towhee_rt.backends, towhee_rt.model_repo_templates):
        assert root in pathlib.Path(module.__file__).resolve().parents, module.__file__
    from towhee_rt.registry import BUILTIN_OPERATORS, operator_class
    for name in BUILTIN_OPERATORS:
        operator_class(name)
    from towhee_rt import shipped
    for tree in shipped.TREES:  # everything that ships is in the wheel
        for file in tree.files:
            assert root in file.source.resolve().parents and file.source.is_file(), file
    for name in shipped.TEMPLATES:
        assert shipped.read_template(name)
    pipe = towhee_rt.dummy_input().image_decode.cv2_rgb().as_function()
    repo = towhee_rt.build_model_repo(pipe, tempfile.mkdtemp() + "/repo")
    ops = repo.path / repo.models[0].model_name / "1" / "towhee_ops"
    assert (ops / "image_decode.py").is_file() and (ops / "operator_base.py").is_file()
    import towhee_rt.client, towhee_rt.gateway
    from towhee_rt import samples
    assert samples.names() == ["chelsea.jpg", "coffee.jpg", "empty.jpg"], samples.names()
    print("installed-ok", len(BUILTIN_OPERATORS))
""")


def test_wheel_installs_non_editable_with_operators_and_templates(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("towhee_rt-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True)
    # Third-party packages come from the dev environment's site-packages, added by a .pth
    # file: .pth files inside that directory (the editable install) are not processed.
    site = Path(subprocess.check_output([str(python), "-c",
                                         "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    out = subprocess.run([str(python), "-c", CHECK, str(venv)], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "installed-ok" in out.stdout
