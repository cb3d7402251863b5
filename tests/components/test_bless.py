import pytest

from common.errors import ConfigError
from components.bless import bless, check_metric_names
from components.bless_config import BlessConfig


def _value(metrics, name):
    return metrics[name]


CONFIG = BlessConfig(
    lower_bounds=("species_accuracy>=0.9", "breed_top1_accuracy>=0.5"),
    no_regression=("breed_top1_accuracy",),
    max_regression=0.01,
)
GOOD = {"species_accuracy": 0.98, "breed_top1_accuracy": 0.90}


def test_first_model_is_judged_by_absolute_bounds_alone():
    blessing = bless(GOOD, None, CONFIG, _value)
    assert blessing.blessed and "first model" in blessing.reason
    assert [c.kind for c in blessing.checks] == ["lower_bound", "lower_bound"]
    weak = bless({"species_accuracy": 0.98, "breed_top1_accuracy": 0.40}, None, CONFIG, _value)
    assert not weak.blessed and "breed_top1_accuracy 0.4000 < 0.5000" in weak.reason


def test_no_regression_against_the_served_model():
    assert bless({"species_accuracy": 0.97, "breed_top1_accuracy": 0.895}, GOOD, CONFIG, _value).blessed  # within 0.01
    worse = bless({"species_accuracy": 0.99, "breed_top1_accuracy": 0.85}, GOOD, CONFIG, _value)
    assert not worse.blessed
    check = worse.checks[-1]
    assert (check.kind, check.baseline, check.passed) == ("no_regression", 0.90, False)
    assert check.threshold == pytest.approx(0.89)


def test_a_broken_served_model_never_blesses_silently():
    blessing = bless(GOOD, None, CONFIG, _value, baseline_error="version 3: OSError: bad file")
    assert not blessing.blessed and "could not be evaluated (version 3: OSError: bad file)" in blessing.reason


def test_unknown_metric_names_are_named():
    with pytest.raises(ConfigError, match="unknown metric\\(s\\) 'speceis_accuracy'"):
        check_metric_names(BlessConfig(lower_bounds=("speceis_accuracy>=0.9",)), ["species_accuracy"])
    with pytest.raises(ConfigError, match="expected 'metric>=number'"):
        check_metric_names(BlessConfig(lower_bounds=("species_accuracy>0.9",)), ["species_accuracy"])
