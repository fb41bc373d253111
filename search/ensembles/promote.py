"""Promotion: from a search's finished trials to its champion, saved, checked and registered.

From the finished trials' saved val probabilities, with no model predicting again, it
compares the best single trial, the report's top-k average and greedy ensemble selection,
all scored by the search's objective. The better ensemble is promoted only when it beats the
best single trial on val; otherwise the best single trial is. The champion is saved as
runs/<space>/champion.keras, the comparison as ensemble.json, and the model is logged and
registered in MLflow (`search.tracking.registry`).

Promotions of one folder take turns under its promotion lock; the workers of a shared study
promote once for the whole study (`after_search`), and a promotion that would give the same
champion from the same trials leaves the champion and the registry as they are.
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from search.data.dataset import ImageData
from search.engine.optuna_storage import open_storage
from search.engine.reaper import counted
from search.engine.strategy import detect
from search.ensembles import champion as champions
from search.ensembles import heldout
from search.ensembles.model import build_ensemble_model, input_size, predict_split
from search.ensembles.refit import refit_epochs, refit_member
from search.ensembles.table import LABELS, print_summary
from search.ensembles.selection import Selection, best_single, followed, greedy_selection, scores, top_k_average, \
    weighted_average
from search.errors import SearchError
from search.metrics import accuracy, log_loss
from search.models import build
from search.tracking import study
from search.runs import atomic, faults
from search.results.saved import SavedSearch, locate
from search.runs.locks import FolderLock
from search.tracking.config import load_config, shared, tracking_uri

# At an equal objective, a log-loss gain below this is noise, not worth k times the inference.
MIN_LOSS_GAIN = 0.01
METHODS = ("auto", *LABELS)
# How long a promotion waits for another one of the same folder to finish.
LOCK_WAIT = 1800
# How long the promoter of a shared study waits for the other workers' last trials to reach
# the tracking store: their files are sent in the background after each trial ends, so the
# study can be over before the last ones arrive.
STUDY_WAIT = 120.0


def beats(ensemble: Selection, single: Selection) -> bool:
    """In-sample only: a better objective, or the same and a val log-loss at least MIN_LOSS_GAIN
    (relative) lower. Promotion decides on held-out figures (`heldout.choose`)."""
    if ensemble.objective_value != single.objective_value:
        return ensemble.score[0] > single.score[0]
    return ensemble.val_log_loss < single.val_log_loss * (1.0 - MIN_LOSS_GAIN)


def _row(selection: Selection, test: dict[str, float] | None = None, choice: heldout.Choice | None = None,
         sizes: dict[str, float] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"method": selection.method, "members": list(selection.members),
                           "weights": list(selection.weights), **{k: float(v) for k, v in selection.values.items()},
                           "val_log_loss": selection.val_log_loss}
    if choice is not None and selection.method in choice.held:
        held = choice.held[selection.method]
        row.update({f"held_out_{k}": float(v) for k, v in held.values.items()})
        row["held_out_chosen"] = [{"members": list(m), "weights": list(w)} for m, w in held.chosen]
    if choice is not None:
        row["inference_cost"] = round(float(choice.costs[selection.method]), 3)
    if sizes is not None:
        row["size_mb"] = round(float(sum(sizes.get(m, 0.0) for m in selection.members)), 3)
    return {**row, **(test or {})}


def _test_scores(candidates: list[Selection], paths: dict[str, Path], data: ImageData,
                 cache: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    labels = data.labels("test")
    found = {}
    for selection in candidates:
        for member in selection.members:
            if member not in cache:
                cache[member] = predict_split(paths[member], data, "test")
        average = weighted_average(cache, selection.members, selection.weights)
        found[selection.method] = {"test_accuracy": accuracy(average, labels), "test_log_loss": log_loss(average, labels)}
    return found


def _same_as_before(now: champions.Current, promoted: Selection, trials: list[str],
                    refit: bool) -> dict[str, Any] | None:
    """The previous ensemble.json when it promoted the same members and weights from the same
    trials, and champion.keras is still the file it describes."""
    previous = now.record
    if previous is None or not now.intact:
        return None
    row = previous.get("promoted", {})
    same = (not refit and not previous.get("refit") and previous.get("trials") == trials
            and row.get("members") == list(promoted.members) and row.get("weights") == list(promoted.weights))
    return previous if same else None


def promote(saved: SavedSearch, *, top_k: int = 2, rounds: int = 50, refit: bool = False, track: bool = True,
            method: str = "auto", verbose: int = 0, force: bool = False) -> dict[str, Any]:
    """Choose, save and log the promoted model of a finished search; returns ensemble.json's content
    (the kept champion's, when the new choice does not score better and `force` is False).

    `method` "auto" promotes the better ensemble only when its held-out score beats the best
    single trial's by the margin (`heldout.choose`); "best_single", "top_k" or "greedy" promote
    that candidate whatever the scores. A champion in place is replaced only by one scoring
    better on val by the search's objective, unless `force`.
    """
    if method not in METHODS:
        raise SearchError(f"--method must be one of {', '.join(METHODS)}; got {method!r}.")
    if top_k < 1 or rounds < 1:
        raise SearchError(f"--top-k and --rounds must be >= 1, got {top_k} and {rounds}.")
    with FolderLock(saved.folder.promotion_lock, doing="promoting the champion", wait=LOCK_WAIT):
        return _promote(saved, top_k=top_k, rounds=rounds, refit=refit, track=track, method=method, verbose=verbose,
                        force=force)


def _promote(saved: SavedSearch, *, top_k: int, rounds: int, refit: bool, track: bool, method: str,
             verbose: int, force: bool) -> dict[str, Any]:
    folder = saved.folder
    gathered = study.gather(saved)
    notes = list(gathered.notes)
    if not gathered.trials:
        raise SearchError(
            f"no finished trials with a saved model in {folder.trials}; run or resume the search "
            f"first (python -m search.run ...).{' ' + notes[0] + '.' if notes else ''}"
        )
    labels = gathered.labels
    probabilities = {trial_id: np.load(t.probabilities) for trial_id, t in gathered.trials.items()}
    objective = followed(saved.objective)
    paths = {t: gathered.trials[t].model for t in probabilities}
    sizes = heldout.file_sizes(paths)

    choosers: dict[str, heldout.Chooser] = {
        "best_single": lambda p, y: best_single(p, y, objective=objective),
        "top_k": lambda p, y: top_k_average(p, y, top_k, objective=objective),
        "greedy": lambda p, y: greedy_selection(p, y, rounds=rounds, objective=objective),
    }
    candidates = [choose(probabilities, labels) for choose in choosers.values()]
    choice = heldout.choose(candidates, probabilities, labels, choosers=choosers, sizes=sizes, seed=saved.seed,
                            method=method)
    promoted, reason = choice.promoted, choice.reason
    trial_ids = sorted(probabilities)
    now = champions.current(folder)
    previous = _same_as_before(now, promoted, trial_ids, refit)
    if previous is not None:
        print(f"The champion is unchanged: {LABELS[promoted.method]} of {' + '.join(promoted.members)} from the same "
              f"{len(trial_ids)} trials, as promoted at {previous.get('created')} ({folder.champion}).")
        print_summary(previous)
        return previous
    replaces = _replaces(now, promoted, objective, refit=refit, force=force)
    if replaces is None:
        assert now.record is not None
        kept = now.record["promoted"]
        print(f"Kept the champion {folder.champion}: {champions.describe(kept, objective)}; the new choice, "
              f"{champions.describe(_row(promoted), objective)}, does not score better by {objective} "
              "(--force replaces it).")
        return now.record
    if replaces:
        notes.append(replaces)
        print(replaces[0].upper() + replaces[1:] + ".", flush=True)
    folds = saved.settings.get("folds")
    images = f"out-of-fold predictions of the {len(labels)} train+val images ({folds} folds)" if folds else "val images"
    notes.append(f"in-sample figures: members chosen and scored on the same {images}, which flatters them; "
                 f"held_out_*: cross-fitted, chosen on one half of the {images} and scored on the other, both ways")
    if folds:
        notes.append(f"each trial's model averages its {folds} fold models (--refit retrains one model on "
                     "train+val instead); the val figures are out-of-fold, with no model scoring images it trained on")

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
        assert data is not None
        member_paths = _refit(saved, promoted, gathered, data, verbose=verbose)
        notes.append("refit: the promoted members were retrained on train+val, so no val score of the saved "
                     "model is honest; its val figures are those of the original members")

    faults.point("promotion")
    model = _save_champion(promoted, member_paths, folder.champion)
    check = _check_model(model, promoted, probabilities, data, labels) if data is not None and not refit \
        and not folds else {}
    promoted_row = {**_row(promoted, test.get(promoted.method), choice, sizes), "model": str(folder.champion),
                    "sha256": champions.digest(folder.champion), "refit": refit, **check}
    if refit and test and data is not None:
        refit_members = Selection("refit", promoted.members, promoted.weights, promoted.values, objective)
        promoted_row.update(_test_scores([refit_members], dict(zip(promoted.members, member_paths)), data, {})["refit"])
    summary: dict[str, Any] = {
        "space": saved.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "finished_trials": len(probabilities),
        "trials": trial_ids,
        "val_images": int(len(labels)),
        "folds": folds,
        "metric": f"val {objective.removeprefix('val_')}, val log-loss breaking ties",
        "objective": objective,
        "top_k": top_k, "rounds": rounds, "refit": refit,
        "held_out": {"method": f"cross-fitting on {heldout.PARTS} stratified halves of the {images}",
                     "seed": saved.seed, "margin": choice.margin, "margin_rule": heldout.margin_rule(objective)},
        "candidates": {s.method: _row(s, test.get(s.method), choice, sizes) for s in candidates},
        "promoted": promoted_row,
        "reason": reason,
        "replaces": replaces or None,
        "notes": notes,
    }
    if track:
        summary["mlflow"] = _track(saved, model, summary, promoted, force=force)
    atomic.write_json(folder.ensemble_record, summary)
    print_summary(summary)
    return summary


def _replaces(now: champions.Current, promoted: Selection, objective: str, *, refit: bool, force: bool) -> str | None:
    """"" when nothing is replaced, what is replaced and why when it is, None when the champion
    in place stays (it scores at least as well and nothing forces the change)."""
    if not now.exists:
        return ""
    if not now.intact:
        return f"{now.problem}: promoting again from the trial records"
    assert now.record is not None
    kept = now.record["promoted"]
    what = champions.describe(kept, now.record.get("objective", objective))
    if now.record.get("objective", objective) != objective:
        return f"replacing the champion ({what}), promoted for another objective"
    if force:
        return f"replacing the champion ({what}) as --force asks"
    if refit:
        return f"replacing the champion ({what}) by its refit on train+val, as --refit asks"
    if promoted.score > champions.score(kept, objective):
        return f"replacing the champion ({what}), which scores lower by {objective}"
    return None


def _refit(saved: SavedSearch, promoted: Selection, gathered: study.Gathered, data: ImageData, *,
           verbose: int) -> list[Path]:
    strategy = detect()
    paths = []
    for number, member in enumerate(promoted.members, 1):
        record = gathered.trials[member].record
        epochs = refit_epochs(record, saved.objective)
        print(f"refit {number}/{promoted.size}: trial {member} on train+val for {epochs} epoch(s) "
              f"({strategy.num_replicas_in_sync} replica(s))", flush=True)
        paths.append(refit_member(
            record, data, strategy, saved.folder.ensemble / "refit" / f"{member}.keras", epochs=epochs,
            steps_per_epoch=saved.settings.get("steps_per_epoch"), seed=saved.seed + number, space=saved.space,
            verbose=verbose,
        ))
    return paths


def _save_champion(promoted: Selection, member_paths: list[Path], champion: Path) -> Any:
    import keras

    if promoted.size == 1:  # the trial's own file, byte for byte
        atomic.copy_file(member_paths[0], champion)
    else:
        build.save_for_serving(build_ensemble_model(member_paths, promoted.weights, names=promoted.members), champion)
    return keras.models.load_model(champion, compile=False)


def _check_model(model: Any, promoted: Selection, probabilities: dict[str, np.ndarray], data: ImageData,
                 labels: np.ndarray) -> dict[str, Any]:
    """Predict val with the reloaded champion: its own accuracy, and how far it is from the selection."""
    if not np.array_equal(data.labels("val"), labels):
        return {"model_check": "skipped: the reopened data's val split differs from the search's"}
    predicted = predict_split(model, data, "val")
    expected = weighted_average(probabilities, promoted.members, promoted.weights)
    return {
        "image_size": input_size(model),
        "model_val_accuracy": accuracy(predicted, labels),
        "model_val_scores": scores(predicted, labels),
        "model_max_abs_diff": float(np.max(np.abs(predicted - expected))),
    }


def _track(saved: SavedSearch, model: Any, summary: dict[str, Any], promoted: Selection, *, force: bool) -> str:
    from search.tracking import registry

    metrics = {k: v for k, v in summary["promoted"].items() if isinstance(v, float) and k != "refit"}
    try:
        return registry.log_promotion(space=saved.name, runs_dir=saved.runs_dir, model=model, summary=summary,
                                      metrics=metrics, score=promoted.score, force=force)
    except Exception as e:  # noqa: BLE001 - tracking must never fail a promotion
        from search.redaction import redact

        first = (str(e).strip().splitlines() or [""])[0][:300]
        return (f"warning: MLflow logging failed ({type(e).__name__}: {redact(first)}); the champion is saved on "
                "disk regardless.")


def after_search(outcome: Any, space: Any, runs_dir: Path, *, track: bool = True) -> None:
    """Run by `search.run` when its search completes (or its time budget ends it): promote
    the finished trials' champion (registered in MLflow unless `track` is False). The workers of a shared Optuna study
    promote once for the whole study: the first to claim it does, the others say who."""
    try:
        saved = locate(str(space.path), runs_dir)
        # A search stopped by its time budget promotes what this worker has; a shared study that
        # ran out of trials promotes once, for all of its workers.
        key = f"{outcome.study}:promote" if outcome.storage and outcome.status == "COMPLETED" else None
        claims = None
        if key:
            from search.liveness.claims import Claims

            claims = Claims(outcome.storage)
            won, holder = claims.claim(key)
            if not won:
                worker = holder.get("worker", {})
                state = "promoted" if holder.get("done") else "is promoting"
                print(f"Study {outcome.study!r}: worker {worker.get('host', '?')}:{worker.get('pid', '?')} {state} "
                      f"its champion (python -m search.ensemble {space.path} promotes again on demand).")
                return
        if claims is not None:
            await_study(saved, outcome.storage, str(outcome.study))
        if study.gather(saved).trials:
            promote(saved, track=track)
        if claims is not None and key is not None:
            claims.finish(key)
    except SearchError as e:
        print(f"warning: no ensemble promoted: {e}", file=sys.stderr)


def await_study(saved: SavedSearch, storage: str, name: str, *, wait: float = STUDY_WAIT) -> int:
    """Wait (at most `wait` seconds) until every completed trial of the shared study `name` is
    among the gathered ones (this folder's and those fetched from the tracking store); returns
    how many are missing when it stops waiting. Without a store that other machines log to,
    nothing more can come: it says so at once."""
    config = load_config()
    uri = tracking_uri(config, saved.runs_dir, saved.name)
    loaded = optuna.load_study(study_name=name, storage=open_storage(storage, saved.space_dir))
    expected = sum(t.state == TrialState.COMPLETE for t in counted(loaded.get_trials(deepcopy=False)))
    reachable = config.enabled and shared(uri, saved.runs_dir)  # where other machines' trials arrive
    deadline = time.monotonic() + (wait if reachable else 0.0)
    said = False
    while True:
        have = len({r["trial_id"] for r in study.gather(saved).records if r["status"] == "COMPLETED"})
        missing = max(0, expected - have)
        if not missing or time.monotonic() >= deadline:
            break
        if not said:
            print(f"Study {name!r}: waiting for {missing} trial(s) of other workers to reach the tracking store "
                  f"(up to {wait:.0f} s).", flush=True)
            said = True
        time.sleep(2.0)
    if missing and not reachable:
        why = "tracking is off" if not config.enabled else "the tracking store is this runs folder's own"
        print(f"warning: {missing} completed trial(s) of study {name!r} ran on workers whose files this machine "
              f"cannot reach ({why}); promoting from the trials here. For one champion of the whole study, "
              "give every worker one MLflow server (docs/distributed.md).", file=sys.stderr, flush=True)
    elif missing:
        print(f"warning: {missing} completed trial(s) of study {name!r} never reached the tracking store; promoting "
              "from the others (python -m search.ensemble promotes again on demand).", file=sys.stderr, flush=True)
    return missing
