import pytest

from common.errors import ConfigError
from components.data_config import DataConfig
from pipeline.config import load_config


def test_image_style_is_small_by_default_and_checked():
    assert DataConfig().image_style == "small"
    assert DataConfig(image_style="photo").problems() == []
    assert DataConfig(image_style="huge").problems() == ["data.image_style must be one of small, photo; got 'huge'"]
    assert load_config(None, ["data.image_style=photo"]).data.image_style == "photo"
    with pytest.raises(ConfigError, match="data.image_style must be one of small, photo; got 'huge'"):
        load_config(None, ["data.image_style=huge"])
