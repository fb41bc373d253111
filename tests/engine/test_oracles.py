"""The oracles a space's `Search` makes (no training)."""

from __future__ import annotations

import random
from pathlib import Path

import keras_tuner as kt
import pytest

from search import Search
from search.errors import SpaceError
from search.engine.oracles import make_oracle

from conftest import oracle_proposals


def proposed(search: Search, folder: Path, trials: int = 4) -> list[dict]:
    """The values the search's oracle proposes for `trials` trials on a small space."""
    hp = kt.HyperParameters()
    hp.Choice("backbone", ["MobileNetV2", "MobileNet", "MobileNetV3Small"])
    hp.Int("head_width", 32, 512, sampling="log")
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    return list(oracle_proposals(make_oracle(search, search.seed), hp, folder, trials))


@pytest.mark.parametrize("seed", [0, 1, 999_999])
@pytest.mark.parametrize("algorithm", ["random", "bayesian"])
def test_a_seed_fixes_the_sequence_of_values_tried(tmp_path: Path, algorithm: str, seed: int) -> None:
    # Keras Tuner takes seed 0, the default, as "no seed"; whatever else ran first must not matter.
    search = Search(algorithm=algorithm, max_trials=4, seed=seed)
    random.seed(1)
    first = proposed(search, tmp_path / "a")
    random.seed(2)
    assert proposed(search, tmp_path / "b") == first


def test_different_seeds_try_different_values(tmp_path: Path) -> None:
    assert proposed(Search(max_trials=4, seed=0), tmp_path / "a") != proposed(Search(max_trials=4, seed=1), tmp_path / "b")


@pytest.mark.parametrize("seed", [-1, 10**6, 1.5, True])
def test_a_seed_out_of_range_is_refused_with_the_range(seed) -> None:
    with pytest.raises(SpaceError, match=r"Search\(seed=.*\) must be a whole number from 0 to 999999"):
        Search(seed=seed)
