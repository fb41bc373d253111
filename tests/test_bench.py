"""The benchmarks load and parse their options (running them takes minutes: see README, Performance)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    """A bench script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["overhead", "input_pipeline", "memory", "gpu", "workers", "mistakes", "frozen_heads",
                                  "two_stages", "cached_views", "search_efficiency"])
def test_bench_script_loads_and_parses_its_options(name, capsys):
    module = _load(name)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_memory_growth_is_split_between_new_and_repeated_layer_shapes():
    module = _load("memory")
    rows = [{"backbone": b, "batch_size": s, "rss_mb": m} for b, s, m in [
        ("MobileNet", 16, 900), ("MobileNet", 32, 950), ("MobileNetV2", 16, 1000),  # trial 3: the base
        ("MobileNet", 16, 1002), ("MobileNetV3Small", 16, 1030), ("MobileNetV2", 16, 1031),
        ("MobileNetV3Small", 32, 1050), ("MobileNet", 32, 1049)]]
    assert module.by_novelty(rows, 3) == {"new_shape_trials": 2, "new_shape_growth_mb": 47.0,
                                          "repeat_shape_trials": 3, "repeat_shape_growth_mb": 2.0}


def test_recycling_gain_compares_the_same_trials_process_by_process():
    module = _load("memory")
    one_process = [1000, 1100, 1050, 1200, 1300, 1250, 1400]
    recycled = [1010, 1090, 1050, 1100, 1150, 1150, 1000]  # fresh processes at trials 4 and 7
    assert module.recycling_gain(one_process, recycled, 3) == [0.0, 116.7, 400.0]


def test_search_efficiency_reads_trials_to_randoms_final_median_by_trials_and_by_epochs():
    module = _load("search_efficiency")

    def run(algorithm, seed, accuracies, epochs):
        return {"algorithm": algorithm, "seed": seed, "trials": [
            {"status": "FAILED" if a is None else "COMPLETED", "val_accuracy": a, "epochs": e, "seconds": 1.0}
            for a, e in zip(accuracies, epochs)]}

    runs = [run("random", 0, [0.5, 0.6, 0.7], [4, 4, 4]), run("random", 1, [0.4, 0.8, 0.8], [4, 4, 4]),
            run("random", 2, [0.6, 0.6, 0.9], [4, 4, 4]),
            # hyperband: short trials first; one failed trial scores nothing
            run("hyperband", 0, [0.3, None, 0.8, 0.9], [1, 1, 3, 4]), run("hyperband", 1, [0.8, 0.7], [1, 3])]
    summary = module.summarize(runs, 3)
    assert summary["random_final_median_best"] == 0.8
    random, hyperband = summary["algorithms"]["random"], summary["algorithms"]["hyperband"]
    assert random["by_trial"][1] == [0.5, 0.6, 0.8]
    assert random["row"]["trials_to_random_final"] == 3 and random["row"]["epochs_to_random_final"] == 12
    # seed 1 stopped after 2 trials and keeps its 0.8; seed 0 reaches 0.8 at its third trial, 5 epochs in
    assert hyperband["by_trial"][1] == [0.55, 0.55, 0.8, 0.85]
    assert hyperband["row"]["trials_to_random_final"] == 3 and hyperband["row"]["epochs_to_random_final"] == 5
    assert hyperband["row"]["failed_trials"] == 1 and hyperband["row"]["seeds_reaching_it"] == 2


def test_search_efficiency_report_keeps_each_finished_search_of_a_seed_cut_short():
    module = _load("search_efficiency")
    trial = {"status": "COMPLETED", "val_accuracy": 0.5, "epochs": 5, "seconds": 1.0}
    done = {("random", 0): [trial] * 3, ("tpe", 0): [trial] * 3, ("random", 1): [trial] * 3,
            ("tpe", 1): [trial] * 2, ("random", 2): []}
    runs, unfinished = module.finished(done, 3)
    assert [(r["algorithm"], r["seed"]) for r in runs] == [("random", 0), ("tpe", 0), ("random", 1)]
    assert unfinished == ["tpe seed 1 (2/3)"]
    assert module.summarize(runs, 3)["algorithms"]["random"]["row"]["seeds"] == 2


@pytest.mark.parametrize("option", [["--per-class", "0"], ["--val-per-class", "-3"], ["--val-per-class", "1001"]])
def test_frozen_heads_refuses_an_image_count_it_cannot_use(option, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = _load("frozen_heads")
    try:
        code = module.main([*option, "--out", str(tmp_path / "out.json")])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert option[0] in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before writing any data
