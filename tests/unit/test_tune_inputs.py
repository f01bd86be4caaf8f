"""What the tuner sends (--inputs, the generated photos) and its command line's usage errors."""
import cv2
import numpy as np
import pytest

from towhee_rt import cli
from towhee_rt.errors import ConfigError
from towhee_rt.tune import cli as tune_cli
from towhee_rt import samples
from towhee_rt.tune.inputs import (PHOTO_SIZES, SAMPLE_SENTENCES, default_inputs,
                                   generated_photos, read_inputs)


def test_generated_photos_are_jpegs_of_realistic_size():
    photos = generated_photos()
    assert len(photos) == len(PHOTO_SIZES)
    for data, (width, height) in zip(photos, PHOTO_SIZES):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (height, width, 3)
        assert len(data) > 20_000  # noisy like a photo, not a flat colour


def test_image_pipelines_default_to_the_sample_photos_and_say_so():
    items, text = default_inputs("image", "image_decode.cv2_rgb", {})
    assert items == [open(samples.path(n), "rb").read() for n in ("chelsea.jpg", "coffee.jpg")]
    assert "chelsea.jpg" in text and "coffee.jpg" in text


def test_text_pipelines_default_to_sentences_of_varied_length():
    items, text = default_inputs("text", "no_such.operator", {})  # no operator needed
    assert items == list(SAMPLE_SENTENCES) and len(items) >= 6
    lengths = sorted(len(s.split()) for s in items)
    assert lengths[0] <= 3 and lengths[-1] >= 60
    assert "built-in sentences" in text and f"{lengths[0]}-{lengths[-1]} words" in text
    with pytest.raises(ConfigError, match="--inputs"):
        default_inputs("other", "no_such.operator", {})  # other kinds: the warm-up items


def test_inputs_from_files_and_directories(tmp_path, good_dir):
    items, _ = read_inputs([str(good_dir)], "image")
    assert items[0] == sorted(p for p in good_dir.iterdir())[0].read_bytes()
    lines = tmp_path / "lines.txt"
    lines.write_text("first sentence\n\n  second one  \n")
    assert read_inputs([str(lines)], "text")[0] == ["first sentence", "second one"]
    with pytest.raises(ConfigError, match="found no image files"):
        read_inputs([str(lines)], "image")
    with pytest.raises(ConfigError, match="no such file"):
        read_inputs([str(tmp_path / "missing")], "image")
    with pytest.raises(ConfigError, match="^inputs .*no such file"):
        read_inputs([str(tmp_path / "missing")], "image", flag="inputs")


def test_usage_errors_exit_2_with_what_to_do(tmp_path, capsys):
    assert tune_cli.main([str(tmp_path / "missing")]) == 2
    assert "build_model_repo" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tune", "--help"])
    assert exit_.value.code == 0 and "--p99-budget-ms" in capsys.readouterr().out


def test_settings_are_checked_before_anything_is_served_or_written(tmp_path):
    from towhee_rt.triton.config import write_config
    from towhee_rt.tune import tune

    from .test_tune_space import DECODE, EMBED, tc

    repo = tmp_path / "repo"
    models = {DECODE.model_name: tc.operator_model_config(DECODE),
              EMBED.model_name: tc.operator_model_config(EMBED),
              "pipeline": tc.ensemble_config("pipeline", [DECODE, EMBED])}
    for name, config in models.items():
        (repo / name).mkdir(parents=True)
        write_config(repo, name, config)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="exists already"):
        tune(repo, out=tmp_path / "taken")
    with pytest.raises(ConfigError, match="max_instances 2"):
        tune(repo, max_instances=2)  # the repository itself uses 3
    with pytest.raises(ConfigError, match="objective"):
        tune(repo, objective="fast")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "taken"]
