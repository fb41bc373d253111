"""Space files: loading, overrides, and the errors a user sees for a broken one."""

from __future__ import annotations

import textwrap
from pathlib import Path

import keras_tuner as kt
import pytest

from search.errors import SpaceError
from search.space import load_space, parse_value

GOOD = """
    from search import Data, Search

    data = Data("builtin:digits")
    search = Search(max_trials=3, epochs=2)

    def hyperparameters(hp):
        hp.Choice("backbone", ["MobileNetV2", "DenseNet121"])
        hp.Float("dropout", 0.2, 0.5, step=0.1)
        hp.Choice("schedule", ["constant", "step"])
        hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", parent_name="schedule", parent_values=["step"])
"""


def write(tmp_path: Path, body: str, name: str = "space.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(SpaceError) as info:
        load_space(path, **kwargs)
    return str(info.value)


def test_loads_a_good_space(tmp_path):
    space = load_space(write(tmp_path, GOOD))
    assert space.name == "space"
    assert space.search.max_trials == 3
    hp = kt.HyperParameters()
    space.declare(hp)
    assert [p.name for p in hp.space] == ["backbone", "dropout", "schedule", "learning_rate"]


def test_set_fixes_hyperparameters_and_overrides_settings(tmp_path):
    space = load_space(
        write(tmp_path, GOOD),
        sets={"backbone": "DenseNet121", "image_size": "64", "epochs": "5", "val_fraction": "0.3"},
    )
    hp = kt.HyperParameters()
    space.declare(hp)
    assert hp.values["backbone"] == "DenseNet121"
    assert hp.values["image_size"] == 64  # not declared by the space: added as fixed
    assert space.search.epochs == 5
    assert space.data.val_fraction == 0.3
    assert space.trial_config(hp.values).backbone == "DenseNet121"


def test_smoke_shrinks_the_search(tmp_path):
    space = load_space(write(tmp_path, GOOD), smoke=True)
    assert (space.search.max_trials, space.search.epochs) == (2, 1)
    assert space.search.steps_per_epoch is not None
    assert space.fixed["weights"] == "none"
    assert space.fixed["image_size"] == 32


def test_command_line_beats_smoke(tmp_path):
    space = load_space(write(tmp_path, GOOD), smoke=True, max_trials=4)
    assert space.search.max_trials == 4


def test_parse_value():
    assert parse_value("64") == 64
    assert parse_value("0.2") == 0.2
    assert parse_value("True") is True
    assert parse_value("none") == "none"
    assert parse_value("MobileNet") == "MobileNet"


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "from search import Data\ndata = Data(\n\ndef f(:\n")
    message = error_of(path)
    assert str(path) in message and "line" in message


def test_unknown_backbone_suggests_the_closest(tmp_path):
    path = write(tmp_path, GOOD.replace('"DenseNet121"', '"DenseNet12"'))
    message = error_of(path)
    assert "DenseNet12" in message and "Did you mean 'DenseNet121'" in message


def test_dropout_outside_range(tmp_path):
    path = write(tmp_path, GOOD.replace("0.2, 0.5, step=0.1", "0.2, 1.5"))
    message = error_of(path)
    assert "dropout" in message and "[0.0, 1.0)" in message


def test_impossible_range_names_the_line(tmp_path):
    path = write(tmp_path, GOOD.replace('hp.Float("dropout", 0.2, 0.5, step=0.1)', 'hp.Int("head_width", 8192, 128)'))
    message = error_of(path)
    assert "head_width" in message and "line 9" in message


def test_unknown_hyperparameter_name(tmp_path):
    path = write(tmp_path, GOOD.replace('"dropout"', '"dropuot"'))
    assert "Did you mean 'dropout'" in error_of(path)


def test_missing_data_declaration(tmp_path):
    path = write(tmp_path, GOOD.replace("data = Data", "dataset = Data"))
    message = error_of(path)
    assert "data = Data(...)" in message and "'dataset'" in message


def test_misnamed_search(tmp_path):
    path = write(tmp_path, GOOD.replace("search = Search", "serach = Search"))
    assert "rename it to 'search'" in error_of(path)


def test_missing_hyperparameters_function(tmp_path):
    path = write(tmp_path, GOOD.replace("def hyperparameters", "def hyperparameter"))
    assert "Did you mean 'hyperparameter'" in error_of(path)


def test_bad_setting_in_declaration(tmp_path):
    path = write(tmp_path, GOOD.replace("Search(max_trials=3", 'Search(algorithm="bayes", max_trials=3'))
    message = error_of(path)
    assert "line 5" in message and "Did you mean 'bayesian'" in message


def test_unknown_set_name(tmp_path):
    message = error_of(write(tmp_path, GOOD), sets={"image_sise": "64"})
    assert "Did you mean 'image_size'" in message


def test_set_value_is_validated(tmp_path):
    message = error_of(write(tmp_path, GOOD), sets={"dropout": "1.0"})
    assert "dropout" in message and "--set" in message


def test_missing_file_suggests_neighbours(tmp_path):
    write(tmp_path, GOOD, name="digits.py")
    assert "Did you mean" in error_of(tmp_path / "digit.py")


def test_shipped_spaces_load():
    for path in sorted(Path("spaces").glob("*.py")):
        load_space(path)
