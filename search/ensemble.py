"""python -m search.ensemble SPACE: promote a search's best trials to one servable model.

From the finished trials' saved val probabilities, with no model predicting again, it
compares the best single trial, the report's top-k average and greedy ensemble selection
(`search.selection`). The better ensemble is promoted only when it beats the best single
trial on val; otherwise the best single trial is. The promoted model is saved as
runs/<space>/champion.keras (`search.ensemble_model`), the comparison as ensemble.json, and
the model is logged and registered in MLflow (`search.ensemble_tracking`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import datetime
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.ensemble_model import build_ensemble_model
from search.cli import Parser, fail
from search.errors import SearchError
from search.hooks import COMPLETED
from search.saved import SavedSearch, locate
from search.selection import (
    Selection, accuracy, best_single, greedy_selection, log_loss, top_k_average, weighted_average,
)  # fmt: skip

__all__ = ["build_ensemble_model", "greedy_selection", "main", "promote", "top_k_average"]

CHAMPION_FILE = "champion.keras"
SUMMARY_FILE = "ensemble.json"
# At equal accuracy, a log-loss gain below this is noise, not worth k times the inference.
MIN_LOSS_GAIN = 0.01
LABELS = {"best_single": "best single", "top_k": "top-k average", "greedy": "greedy selection"}


def finished_trials(space_dir: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """{trial id: record} of completed trials whose model and val probabilities are on disk,
    and notes about the completed ones that cannot take part."""
    from search.results import load_records

    usable, notes = {}, []
    for record in load_records(space_dir):
        if record["status"] != COMPLETED:
            continue
        trial_dir = space_dir / "trials" / record["trial_id"]
        if not (trial_dir / "val_probabilities.npy").is_file():
            notes.append(f"trial {record['trial_id']} has no val_probabilities.npy; left out")
        elif not (trial_dir / "model.keras").is_file():
            notes.append(f"trial {record['trial_id']} kept no model.keras (Search(keep_models='best')); left out")
        else:
            usable[record["trial_id"]] = record
    return usable, notes


def beats(ensemble: Selection, single: Selection) -> bool:
    """Worth serving several models instead of one: higher val accuracy, or the same accuracy
    and a val log-loss at least MIN_LOSS_GAIN (relative) lower."""
    if ensemble.val_accuracy != single.val_accuracy:
        return ensemble.val_accuracy > single.val_accuracy
    return ensemble.val_log_loss < single.val_log_loss * (1.0 - MIN_LOSS_GAIN)


def _row(selection: Selection, test: dict[str, float] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "method": selection.method, "members": list(selection.members), "weights": list(selection.weights),
        "val_accuracy": selection.val_accuracy, "val_log_loss": selection.val_log_loss,
    }
    return {**row, **(test or {})}


def _test_scores(
    candidates: list[Selection], paths: dict[str, Path], data: Any, cache: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    from search.ensemble_model import predict_split

    labels = data.labels("test")
    scores = {}
    for selection in candidates:
        for member in selection.members:
            if member not in cache:
                cache[member] = predict_split(paths[member], data, "test")
        average = weighted_average(cache, selection.members, selection.weights)
        scores[selection.method] = {"test_accuracy": accuracy(average, labels), "test_log_loss": log_loss(average, labels)}
    return scores


def promote(
    saved: SavedSearch, *, top_k: int = 2, rounds: int = 50, refit: bool = False, track: bool = True,
    method: str = "auto", verbose: int = 0,
) -> dict[str, Any]:
    """Choose, save and log the promoted model of a finished search; returns ensemble.json's content.

    `method` "auto" promotes the better ensemble only when it beats the best single trial;
    "best_single", "top_k" or "greedy" promote that candidate whatever the scores.
    """
    if method not in ("auto", *LABELS):
        raise SearchError(f"--method must be auto, {', '.join(LABELS)}; got {method!r}.")
    space_dir = saved.space_dir
    trials, notes = finished_trials(space_dir)
    if not trials:
        raise SearchError(
            f"no finished trials with a saved model in {space_dir}/trials; run or resume the search "
            f"first (python -m search.run ...).{' ' + notes[0] + '.' if notes else ''}"
        )
    if top_k < 1 or rounds < 1:
        raise SearchError(f"--top-k and --rounds must be >= 1, got {top_k} and {rounds}.")
    if not (space_dir / "val_labels.npy").is_file():
        raise SearchError(f"{space_dir}/val_labels.npy is missing; re-run the search with --fresh.")
    labels = np.load(space_dir / "val_labels.npy")
    probabilities: dict[str, np.ndarray] = {}
    for trial_id in trials:
        p = np.load(space_dir / "trials" / trial_id / "val_probabilities.npy")
        if p.shape[0] != len(labels):
            notes.append(f"trial {trial_id}: {p.shape[0]} val predictions for {len(labels)} val labels; left out")
            continue
        probabilities[trial_id] = p
    if not probabilities:
        raise SearchError(f"no trial in {space_dir} has val predictions matching val_labels.npy; re-run with --fresh.")

    single = best_single(probabilities, labels)
    candidates = [single, top_k_average(probabilities, labels, top_k), greedy_selection(probabilities, labels, rounds=rounds)]
    best_ensemble = max(candidates[1:], key=lambda s: s.score)  # top-k first on ties: the report's method
    if method != "auto":
        promoted = next(c for c in candidates if c.method == method)
        reason = f"chosen with --method {method}"
    elif best_ensemble.size > 1 and beats(best_ensemble, single):
        promoted = best_ensemble
        reason = (f"it beats the best single trial {single.members[0]} on val: accuracy "
                  f"{promoted.val_accuracy:.4f} vs {single.val_accuracy:.4f}, log-loss "
                  f"{promoted.val_log_loss:.4f} vs {single.val_log_loss:.4f}")
    else:
        promoted = single
        reason = (f"no ensemble beats it on val: the best, {LABELS[best_ensemble.method]}, has accuracy "
                  f"{best_ensemble.val_accuracy:.4f} vs {single.val_accuracy:.4f}, log-loss "
                  f"{best_ensemble.val_log_loss:.4f} vs {single.val_log_loss:.4f}"
                  if len(probabilities) > 1 else "only one trial has finished")
    notes.append("members are chosen and scored on the same val set, which flatters the chosen ones; "
                 "test scores, where there is a labelled test split, do not share that bias")

    paths = {t: space_dir / "trials" / t / "model.keras" for t in probabilities}
    data = None
    try:
        data = saved.open_data()
    except SearchError as e:
        if refit:
            raise SearchError(f"--refit needs the search's data, which cannot be opened: {e}") from None
        notes.append(f"the search's data cannot be opened ({e}); no test scores and no check of the saved model")
    test = {}
    if data is not None and data.has_split("test") and saved.record.get("data", {}).get("labelled", {}).get("test"):
        test = _test_scores(candidates, paths, data, {})

    member_paths = [paths[m] for m in promoted.members]
    if refit:
        member_paths = _refit(saved, promoted, trials, data, verbose=verbose)
        notes.append("refit: the promoted members were retrained on train+val, so no val score of the saved "
                     "model is honest; its val figures are those of the original members")

    champion = space_dir / CHAMPION_FILE
    model = _save_champion(promoted, member_paths, champion)
    check = _check_model(model, promoted, probabilities, data, labels) if data is not None and not refit else {}
    promoted_row = {**_row(promoted, test.get(promoted.method)), "model": str(champion), "refit": refit, **check}
    if refit and test:
        refit_scores = _test_scores(
            [Selection("refit", promoted.members, promoted.weights, 0.0, 0.0)],
            dict(zip(promoted.members, member_paths)), data, {},
        )["refit"]
        promoted_row.update(refit_scores)
    summary: dict[str, Any] = {
        "space": saved.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "finished_trials": len(probabilities),
        "val_images": int(len(labels)),
        "metric": "val accuracy, val log-loss breaking ties",
        "top_k": top_k, "rounds": rounds, "refit": refit,
        "candidates": {s.method: _row(s, test.get(s.method)) for s in candidates},
        "promoted": promoted_row,
        "reason": reason,
        "notes": notes,
    }
    if track:
        summary["mlflow"] = _track(saved, model, summary, promoted)
    from search.results import write_json

    write_json(space_dir / SUMMARY_FILE, summary)
    _print(summary)
    return summary


def _refit(saved: SavedSearch, promoted: Selection, trials: dict[str, dict[str, Any]], data: Any, *, verbose: int) -> list[Path]:
    from search.ensemble_model import refit_epochs, refit_member

    objective = saved.settings.get("objective", "val_accuracy")
    paths = []
    for number, member in enumerate(promoted.members, 1):
        epochs = refit_epochs(trials[member], objective)
        print(f"refit {number}/{promoted.size}: trial {member} on train+val for {epochs} epoch(s)", flush=True)
        paths.append(refit_member(
            trials[member], data, saved.space_dir / "ensemble" / "refit" / f"{member}.keras", epochs=epochs,
            steps_per_epoch=saved.settings.get("steps_per_epoch"), seed=saved.seed + number, verbose=verbose,
        ))
    return paths


def _save_champion(promoted: Selection, member_paths: list[Path], champion: Path) -> Any:
    import keras

    from search.ensemble_model import save_model

    if promoted.size == 1:  # the trial's own file, byte for byte
        tmp = champion.with_name(f".{champion.name}.tmp")
        shutil.copyfile(member_paths[0], tmp)
        os.replace(tmp, champion)
    else:
        save_model(build_ensemble_model(member_paths, promoted.weights, names=promoted.members), champion)
    return keras.models.load_model(champion, compile=False)


def _check_model(model: Any, promoted: Selection, probabilities: dict[str, np.ndarray], data: Any, labels: np.ndarray) -> dict[str, Any]:
    """Predict val with the reloaded champion: its own accuracy, and how far it is from the selection."""
    from search.ensemble_model import input_size, predict_split

    if not np.array_equal(data.labels("val"), labels):
        return {"model_check": "skipped: the reopened data's val split differs from the search's"}
    predicted = predict_split(model, data, "val")
    expected = weighted_average(probabilities, promoted.members, promoted.weights)
    return {
        "image_size": input_size(model),
        "model_val_accuracy": accuracy(predicted, labels),
        "model_max_abs_diff": float(np.max(np.abs(predicted - expected))),
    }


def _track(saved: SavedSearch, model: Any, summary: dict[str, Any], promoted: Selection) -> str:
    from search import ensemble_tracking

    metrics = {k: v for k, v in summary["promoted"].items() if isinstance(v, float) and k != "refit"}
    try:
        return ensemble_tracking.log_promotion(
            space=saved.name, runs_dir=saved.runs_dir, model=model, summary=summary, metrics=metrics,
            score=promoted.score,
        )
    except Exception as e:  # noqa: BLE001 - tracking must never fail a promotion
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return f"warning: MLflow logging failed ({type(e).__name__}: {first}); the champion is saved on disk regardless."


def _print(summary: dict[str, Any]) -> None:
    rows = summary["candidates"]
    with_test = any("test_accuracy" in r for r in rows.values())
    print(f"\nEnsembles of {summary['finished_trials']} finished trials, scored on {summary['val_images']} val images"
          + (" and the labelled test split" if with_test else "") + ":")
    print(f"  {'candidate':<18} {'val acc':>8} {'val loss':>9}" + (f" {'test acc':>9}" if with_test else "") + "  members")
    for method, r in rows.items():
        members = " + ".join(m if w == 1 else f"{m} x{w}" for m, w in zip(r["members"], r["weights"]))
        test = f" {r['test_accuracy']:>9.4f}" if "test_accuracy" in r else (" " * 10 if with_test else "")
        print(f"  {LABELS[method]:<18} {r['val_accuracy']:>8.4f} {r['val_log_loss']:>9.4f}{test}  {members}")
    promoted = summary["promoted"]
    members = " + ".join(m if w == 1 else f"{m} x{w}" for m, w in zip(promoted["members"], promoted["weights"]))
    print(f"Promoted: {LABELS[promoted['method']]} ({members}); {summary['reason']}.")
    if "model_max_abs_diff" in promoted:
        print(f"  saved model reloaded: val accuracy {promoted['model_val_accuracy']:.4f}, "
              f"max |difference| from the members' weighted average {promoted['model_max_abs_diff']:.2g}")
    if summary["refit"]:
        refit_test = f"; test accuracy after refit {promoted['test_accuracy']:.4f}" if "test_accuracy" in promoted else ""
        print(f"  refit on train+val: its val score cannot be measured honestly{refit_test}")
    print(f"Champion: {promoted['model']}  (details: {Path(promoted['model']).parent / SUMMARY_FILE})")
    if summary.get("mlflow"):
        print(summary["mlflow"], file=sys.stderr if summary["mlflow"].startswith("warning:") else sys.stdout)


def after_search(space: str, runs_dir: Path, *, track: bool = True) -> None:
    """Run by `search.run` when a search completes: promote when >= 2 trials finished
    (registered in MLflow unless `track` is False: `search.run --no-tracking`)."""
    try:
        saved = locate(space, runs_dir)
        if len(finished_trials(saved.space_dir)[0]) >= 2:
            promote(saved, track=track)
    except SearchError as e:
        print(f"warning: no ensemble promoted: {e}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = Parser("python -m search.ensemble", "Promote a search's best trials to one model (runs/<space>/champion.keras).")
    p.add_saved_search()
    p.add_argument("--top-k", type=int, default=2, metavar="K", help="how many best trials top-k averaging takes (default 2, as the report)")
    p.add_argument("--rounds", type=int, default=50, metavar="N", help="rounds of greedy selection (default 50)")
    p.add_argument("--method", default="auto", choices=["auto", "best-single", "top-k", "greedy"],
                   help="auto (default): the better ensemble if it beats the best single trial; else force one")
    p.add_argument("--refit", action="store_true", help="retrain the promoted members on train+val before saving")
    p.add_argument("--no-tracking", action="store_true", help="do not log or register the model in MLflow")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines during --refit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        saved = locate(args.space, Path(args.runs_dir))
        promote(saved, top_k=args.top_k, rounds=args.rounds, refit=args.refit, track=not args.no_tracking,
                method=args.method.replace("-", "_"), verbose=0 if args.quiet else 2)
    except SearchError as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
