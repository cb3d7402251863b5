import pytest

from common.errors import ConfigError
from pipeline.config import PipelineConfig, load_config


def test_defaults_file_then_flags(tmp_path):
    path = tmp_path / "petpipe.toml"
    path.write_text('work_dir = "w"\n[train]\nepochs = 5\nfilters = [8, 16]\n[data]\neval_fraction = 0.2\n')
    config = load_config(str(path), ["train.epochs=7", "export.serving_dir=/srv/models"])
    assert config.train.epochs == 7  # the flag wins over the file
    assert config.train.filters == (8, 16)
    assert config.data.eval_fraction == 0.2
    assert config.model_base_path == "/srv/models/pets"
    assert config.tfrecord_root == "w/tfrecords"
    assert load_config().train == PipelineConfig().train
    assert load_config(None, ["bless.lower_bounds="]).bless.lower_bounds == ()
    assert load_config(None, ["bless.no_regression=species_accuracy"]).bless.no_regression == ("species_accuracy",)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch'"),
        ("train.epochs=three", "train.epochs: expected int, got 'three'"),
        ("train=3", "train: is a section"),
        ("data.eval_fraction=1.5", "data.eval_fraction must be in"),
        ("epochs", "--set expects KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_config(str(tmp_path / "missing.toml"))
