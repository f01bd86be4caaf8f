"""``python -m towhee_rt.deploy kubernetes``: help, files written, usage errors exit 2."""
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import towhee_rt as towhee
from towhee_rt.deploy.cli import build_parser, main

IMAGE = "registry.example.com/image_embedding:v1"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    pipe = towhee.dummy_input().image_decode.cv2_rgb().as_function()
    return str(towhee.build_model_repo(pipe, tmp_path_factory.mktemp("cli") / "repo").path)


def test_help_explains_every_flag():
    parser = build_parser()
    kubernetes = parser._subparsers._group_actions[0].choices["kubernetes"]
    for action in kubernetes._actions:
        if action.option_strings or action.dest == "repository":
            assert action.help and len(action.help) > 20, action.dest
    text = subprocess.run([sys.executable, "-m", "towhee_rt.deploy", "kubernetes", "--help"],
                          capture_output=True, text=True, timeout=60).stdout
    for flag in ("--image", "--out", "--replicas", "--max-replicas", "--namespace",
                 "--cpu-request", "--memory-limit", "--api-key-secret", "--service-monitor",
                 "--kserve", "kubectl apply -k"):
        assert flag in text


def test_writes_the_manifests_and_says_how_to_apply(repo, tmp_path, capsys):
    out = tmp_path / "k8s"
    code = main(["kubernetes", repo, "--image", IMAGE, "--out", str(out), "--replicas", "3",
                 "--max-replicas", "6", "--namespace", "search", "--memory-limit", "4Gi",
                 "--name", "embed"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"kubectl apply -k {out}" in printed
    deployment = yaml.safe_load((out / "deployment.yaml").read_text())
    assert deployment["metadata"] == {"name": "embed", "namespace": "search",
                                      "labels": deployment["metadata"]["labels"]}
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == "4Gi"
    hpa = yaml.safe_load((out / "horizontalpodautoscaler.yaml").read_text())
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 6)

    assert main(["kubernetes", repo, "--image", IMAGE, "--out", str(tmp_path / "ks"),
                 "--kserve"]) == 0
    assert sorted(p.name for p in (tmp_path / "ks").iterdir()) == [
        "inferenceservice.yaml", "kustomization.yaml", "servingruntime.yaml"]


def test_towhee_rt_deploy_writes_the_same_files(repo, tmp_path):
    from towhee_rt import cli

    argv = ["kubernetes", repo, "--image", IMAGE, "--replicas", "3"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert cli.main(["deploy"] + argv + ["--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


@pytest.mark.parametrize("args, message", [
    (["REPO", "--out", "OUT"], "no image given"),
    (["MISSING", "--image", IMAGE, "--out", "OUT"], "not a directory"),
    (["REPO", "--image", IMAGE, "--out", "OUT", "--replicas", "0"], "replicas must be"),
    (["REPO", "--image", IMAGE, "--out", "OUT", "--replicas", "4", "--max-replicas", "2"],
     "must be at least replicas"),
    (["REPO", "--image", IMAGE, "--out", "OUT", "--cpu-limit", "2 cores"],
     "not a Kubernetes quantity"),
], ids=["no-image", "no-repository", "zero-replicas", "max-below-min", "bad-quantity"])
def test_usage_errors_exit_2_with_what_to_do(repo, tmp_path, capsys, args, message):
    fills = {"REPO": repo, "MISSING": str(tmp_path / "missing"), "OUT": str(tmp_path / "out")}
    assert main(["kubernetes"] + [fills.get(a, a) for a in args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_non_number_is_refused_by_the_parser_with_exit_2(repo):
    with pytest.raises(SystemExit) as exit_info:
        main(["kubernetes", repo, "--image", IMAGE, "--replicas", "two"])
    assert exit_info.value.code == 2


def test_the_readme_command_runs(repo, tmp_path):
    """The command in docs/deploy.md's "Deploy on Kubernetes" section, on a test repository."""
    page = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text()
    section = page.split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    command = section.split("python -m towhee_rt.deploy ", 1)[1]
    words = shlex.split(command.split("\nkubectl", 1)[0].replace("\\\n", " "))
    assert words[:2] == ["kubernetes", "/tmp/towhee_rt_readme/docker/models"]
    out = words.index("--out") + 1
    words[1], words[out] = repo, str(tmp_path / "k8s")
    assert main(words) == 0
    assert (tmp_path / "k8s" / "kustomization.yaml").is_file()
