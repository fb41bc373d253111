"""Which hyperparameters mattered: Optuna's importance evaluator on the finished trials, with its spread.

Whatever algorithm ran the trials, their values and scores go into an in-memory Optuna study
(the ranges each hyperparameter took are read off the trials), and fANOVA
(`optuna.importance.FanovaImportanceEvaluator`) splits the objective's variance between
them. A few trials say little: below `MIN_TRIALS` nothing is shown and the reason is, and
above it each share comes with its spread over bootstrap resamples of the trials. Written as
importance.csv and importance.png, with Optuna's own plots of the same study (history,
parallel coordinates, slice, importance), and logged on the search's MLflow run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search.results import plots
from search.runs import atomic
from search.runs.layout import SpaceDir

MIN_TRIALS = 5  # fewer completed trials than this say nothing worth a number
RESAMPLES = 20  # bootstrap resamples of the trials behind each share's spread
OPTUNA_PLOTS = ("history", "parallel_coordinate", "slice", "param_importances")


@dataclasses.dataclass
class Importance:
    method: str
    trials: int
    # hyperparameter, importance (shares summing to 1), spread (std over resamples), low, high
    # (10th and 90th percentiles over resamples); most important first
    table: pd.DataFrame
    files: list[Path]


def _distribution(values: list[Any]) -> Any:
    import optuna.distributions as d

    if all(isinstance(v, bool) for v in values) or not all(isinstance(v, (int, float)) for v in values):
        return d.CategoricalDistribution(sorted({v for v in values}, key=str))
    low, high = min(values), max(values)
    if all(isinstance(v, int) for v in values):
        return d.IntDistribution(int(low), int(high))
    return d.FloatDistribution(float(low), float(high))


def _finished(records: list[dict[str, Any]], objective: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "COMPLETED" and (r.get("best") or {}).get(objective) is not None
            and math.isfinite(r["best"][objective])]


def _varying(done: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({k for r in done for k in (r.get("values") or {}) if not k.startswith("tuner/")})
    varying = {}
    for name in names:
        values = [r["values"][name] for r in done if name in r.get("values", {})]
        if len(values) == len(done) and len({str(v) for v in values}) > 1:
            varying[name] = _distribution(values)
    return varying


def why_not(records: list[dict[str, Any]], objective: str) -> str | None:
    """Why importance is not shown for these records (None when it is)."""
    done = _finished(records, objective)
    if len(done) < MIN_TRIALS:
        return (f"{len(done)} completed trial(s) with a {objective}; importance needs at least {MIN_TRIALS}, "
                "fewer say nothing worth a number")
    if not _varying(done):
        return "no hyperparameter took more than one value over the completed trials"
    return None


def study_of(records: list[dict[str, Any]], objective: str) -> Any:
    """An in-memory Optuna study holding the completed trials (their varying values and scores)."""
    import optuna

    from search import metrics

    done = _finished(records, objective)
    varying = _varying(done)
    direction = optuna.study.StudyDirection.MINIMIZE if metrics.direction(objective) == "min" \
        else optuna.study.StudyDirection.MAXIMIZE
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction=direction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([objective])  # the plots' axis: the objective's name, not "Objective Value"
    for r in done:
        params = {name: r["values"][name] for name in varying}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=varying, value=float(r["best"][objective])))
    return study


def _shares(study: Any, seed: int) -> dict[str, float]:
    import optuna

    found = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    return {k: float(v) for k, v in found.items()}


def compute(records: list[dict[str, Any]], objective: str, seed: int = 0,
            resamples: int = RESAMPLES) -> tuple[pd.DataFrame, int] | None:
    """(table, trials used), or None when `why_not` has a reason."""
    if why_not(records, objective) is not None:
        return None
    done = _finished(records, objective)
    found = _shares(study_of(done, objective), seed)
    rng = np.random.default_rng(seed)
    drawn: dict[str, list[float]] = {name: [] for name in found}
    for i in range(resamples):
        sample = [done[j] for j in rng.integers(0, len(done), len(done))]
        if why_not(sample, objective) is not None:  # a resample where nothing varied: every share 0
            shares: dict[str, float] = {}
        else:
            shares = _shares(study_of(sample, objective), seed + i + 1)
        for name in drawn:
            drawn[name].append(shares.get(name, 0.0))
    table = pd.DataFrame({
        "hyperparameter": list(found),
        "importance": [round(v, 4) for v in found.values()],
        "spread": [round(float(np.std(drawn[n])), 4) for n in found],
        "low": [round(float(np.percentile(drawn[n], 10)), 4) for n in found],
        "high": [round(float(np.percentile(drawn[n], 90)), 4) for n in found],
    })
    return table, len(done)


def shown(table: pd.DataFrame) -> str:
    """The table as the console prints it: two decimals, each share with its spread."""
    return "\n".join(f"  {row.hyperparameter:<24} {row.importance:.2f} ± {row.spread:.2f}  "
                     f"(resampled: {row.low:.2f} to {row.high:.2f})" for row in table.itertuples())


def write(records: list[dict[str, Any]], folder: SpaceDir, objective: str) -> Importance | None:
    computed = compute(records, objective)
    if computed is None:
        return None
    table, trials = computed
    csv = atomic.write_with(folder.importance_csv, lambda tmp: table.to_csv(tmp, index=False))
    png = plot(table, folder.importance_plot, title=f"{folder.name}: what {objective} depended on ({trials} trials)")
    return Importance("fANOVA", trials, table, [csv, png, *optuna_plots(study_of(records, objective), folder.path)])


def plot(table: pd.DataFrame, path: Path, *, title: str) -> Path:
    drawn = plots.figure(8, 1.4 + 0.35 * len(table))
    axes = drawn.add_subplot()
    shown = table.iloc[::-1]
    errors = [shown["importance"] - shown["low"], shown["high"] - shown["importance"]] if "low" in shown else None
    axes.barh(shown["hyperparameter"], shown["importance"], color="C0", xerr=np.clip(errors, 0, None)
              if errors is not None else None, capsize=3)
    axes.set_xlabel("share of the objective's variance (fANOVA); bars: 10th to 90th percentile of resamples")
    axes.set_xlim(0, 1)
    axes.grid(True, axis="x", alpha=0.3)
    axes.set_title(title, fontsize=10)
    return plots.save(drawn, path)


def optuna_plots(study: Any, folder: Path) -> list[Path]:
    """Optuna's own matplotlib plots of the study, as optuna_<name>.png files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots_module

    written = []
    for name in OPTUNA_PLOTS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" warnings of optuna.visualization.matplotlib
            draw = getattr(optuna_plots_module, f"plot_{'optimization_history' if name == 'history' else name}")
            drawn = draw(study, target_name=(study.metric_names or ["objective"])[0])
        first = np.ravel(drawn)[0] if isinstance(drawn, np.ndarray) else drawn
        figure = first.get_figure()
        figure.set_size_inches(max(8.0, figure.get_size_inches()[0]), 5.0)
        path = Path(folder) / f"optuna_{name}.png"
        atomic.write_with(path, functools.partial(_save, figure))
        plt.close(figure)
        written.append(path)
    return written


def _save(figure: Any, path: Path) -> None:
    figure.savefig(path, format="png", bbox_inches="tight")
