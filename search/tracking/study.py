"""The finished trials of a whole search, wherever they ran.

A search on one machine has all its trials in its runs folder. The workers of a shared
Optuna study on several machines each keep only their own there; every finished trial also
sent its record, val probabilities, model and val labels to the tracking store (the
`trial/` artifacts of its MLflow run, tagged with the study). `gather` takes the local
trials and fetches the others once into runs/<space>/study/<id>/, so that the ensemble,
the report and the Pareto front of any worker see the whole study. Without a tracking
store, or when it cannot be reached, it says so in a note and uses the local trials.

The study itself (its Optuna storage) is the list of what finished: each finished trial also
keeps its record's summary there (the `record` user attribute, set before it is told). What
the study finished and neither this folder nor the tracking store has is named in a note
with the machine it ran on; its summary still puts it on the leaderboard and the Pareto
front, and the note says the ensemble cannot use it (its files are unreachable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from search.results.records import FINISHED, load_records, read_record
from search.runs.layout import TrialDir
from search.results.saved import SavedSearch

LOCAL, FETCHED, STUDY = "local", "tracking store", "study"
# The Optuna trial user attribute holding the summary of the trial's record.
RECORD_ATTR = "record"
# What the summary leaves out: the per-epoch history (long) and paths on the machine that ran it.
_NOT_KEPT = ("history", "model_path", "val_probabilities_path")


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the study keeps of a trial's record: enough for the leaderboard and the Pareto front."""
    return {k: v for k, v in record.items() if k not in _NOT_KEPT}


def summary_of(trial: TrialDir) -> dict[str, Any] | None:
    """The summary of the record in `trial`'s folder, or None when it has none."""
    record = read_record(trial)
    return summary(record) if record is not None else None


@dataclasses.dataclass(frozen=True)
class StudyTrial:
    trial_id: str
    state: str
    ran_on: str  # host:pid of its worker, "?" when it never said
    record: dict[str, Any] | None  # its record's summary, as the study keeps it


def _study_trials(saved: SavedSearch, storage: str | None, notes: list[str]) -> list[StudyTrial] | None:
    """The study's finished trials (COMPLETE, PRUNED) from its storage; None without a study."""
    name = saved.record.get("study")
    if not name:
        return None
    url = storage or (saved.settings.get("options") or {}).get("storage")
    if url and "***" in str(url):
        notes.append("search.json hides the study's storage password: pass --storage URL to check the study "
                     "for trials missing here")
        return None
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        if url:
            opened: Any = optuna.storages.RDBStorage(str(url), skip_compatibility_check=True)
        else:
            journal = saved.folder.path / "optuna.journal"
            if not journal.is_file():
                return None
            from optuna.storages.journal import JournalFileBackend

            opened = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        trials = optuna.load_study(study_name=str(name), storage=opened).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    except Exception as e:  # noqa: BLE001 - the trials gathered are still there
        from search.redaction import redact

        first = (str(e).strip().splitlines() or [""])[0]
        notes.append(f"study {name!r} could not be read ({type(e).__name__}: {redact(first)[:200]}); "
                     "cannot tell whether trials are missing")
        return None
    found = []
    for t in trials:
        worker = t.user_attrs.get("worker")
        ran_on = f"{worker.get('host', '?')}:{worker.get('pid', '?')}" if isinstance(worker, dict) else "?"
        record = t.user_attrs.get(RECORD_ATTR)
        found.append(StudyTrial(str(t.user_attrs.get("kt_trial_id") or f"{t.number:04d}"), t.state.name, ran_on,
                                record if isinstance(record, dict) and "status" in record else None))
    return found


@dataclasses.dataclass(frozen=True)
class Trial:
    record: dict[str, Any]
    model: Path
    probabilities: Path
    source: str = LOCAL


@dataclasses.dataclass
class Gathered:
    trials: dict[str, Trial]  # trial id -> its files, finished trials with a model only
    labels: np.ndarray
    records: list[dict[str, Any]]  # every record (finished or not), local and fetched
    notes: list[str]
    # Summaries of the study's finished trials found nowhere else (no files: listed, never ensembled).
    summarised: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def listed(self) -> list[dict[str, Any]]:
        """Every trial the leaderboard and the Pareto front show: the records, then the study's summaries."""
        return self.records + self.summarised

    @property
    def fetched(self) -> int:
        return sum(1 for t in self.trials.values() if t.source == FETCHED)


def _digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels.astype(np.int64)).tobytes()).hexdigest()[:16]


def _load_labels(path: Path) -> np.ndarray | None:
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError):
        return None


def _fetch(saved: SavedSearch, known: set[str], notes: list[str]) -> list[TrialDir]:
    """Trial folders under runs/<space>/study/ for the study's finished trials run elsewhere."""
    study_name = saved.record.get("study")
    if not study_name:
        return []
    from search.tracking import client as clients
    from search.tracking.config import load_config, tracking_uri

    config = load_config()
    if not config.enabled:
        return []
    uri = tracking_uri(config, saved.runs_dir, saved.name)
    try:
        client = clients.connect(uri)
        found = client.get_experiment_by_name(config.experiment.format(space=saved.name))
        if found is None:
            return []
        runs = client.search_runs(
            [found.experiment_id], max_results=5000,
            filter_string=f"tags.study = '{study_name}' and tags.status = 'COMPLETED' and attributes.status = 'FINISHED'")
    except Exception as e:  # noqa: BLE001 - the local trials are still there
        from search.redaction import redact

        notes.append(f"the study's other trials could not be listed from the tracking store ({redact(str(e))[:200]}); "
                     "using this folder's trials only")
        return []
    fetched = []
    for run in runs:
        trial_id = run.data.tags.get("trial_id")
        if not trial_id or trial_id in known:
            continue
        target = saved.folder.study_cache / trial_id
        cached = all((target / name).is_file() for name in SENT)
        if not cached and not _download(client, run.info.run_id, trial_id, target, notes):
            continue
        known.add(trial_id)
        fetched.append(TrialDir(target))
    return fetched


# A trial's run is FINISHED before its worker has sent its files (they go in the background,
# val_labels.npy last, after the model): a trial is kept in the cache only once they all came.
SENT = ("result.json", "val_probabilities.npy", "val_labels.npy")


def _download(client: Any, run_id: str, trial_id: str, target: Path, notes: list[str]) -> bool:
    """Fetch a trial's `trial/` artifacts into `target`; whether they are all there."""
    tmp = target.with_name(f".{trial_id}.fetching-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        client.download_artifacts(run_id, "trial", str(tmp))
        missing = [name for name in SENT if not (tmp / "trial" / name).is_file()]
        if missing:
            notes.append(f"trial {trial_id} of the study has not sent all its files yet ({', '.join(missing)} "
                         "missing); left out")
            return False
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy (cached before this check existed)
        try:
            (tmp / "trial").rename(target)
        except OSError:
            if not all((target / name).is_file() for name in SENT):  # not another process's complete copy
                raise
        return True
    except Exception as e:  # noqa: BLE001 - one trial missing is a note, not a failure
        notes.append(f"trial {trial_id} of the study could not be fetched ({type(e).__name__}); left out")
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gather(saved: SavedSearch, *, fetch: bool = True, storage: str | None = None) -> Gathered:
    """Every finished trial of the search with its model and val probabilities on disk;
    `storage`: the study's storage URL, where search.json's hides its password."""
    folder = saved.folder
    notes: list[str] = []
    records = load_records(folder)
    local = {r["trial_id"] for r in records}
    fetched_dirs = _fetch(saved, set(local), notes) if fetch else []
    in_study = _study_trials(saved, storage, notes)
    labels = _load_labels(folder.val_labels)
    for directory in fetched_dirs:
        if labels is None:
            labels = _load_labels(directory.path / "val_labels.npy")
    trials: dict[str, Trial] = {}
    everything = list(records)
    sources = [(folder.trial(r["trial_id"]), r, LOCAL) for r in records]
    for directory in fetched_dirs:
        record = read_record(directory)
        if record is not None:
            everything.append(record)
            sources.append((directory, record, FETCHED))
    summarised = _missing(in_study, {r["trial_id"] for r in everything}, saved.record.get("study"), notes)
    if labels is None:
        if any(r["status"] in FINISHED for r in everything):
            notes.append(f"{folder.val_labels} is missing or damaged; run `python -m search.run` again to rewrite it")
        return Gathered({}, np.zeros(0, np.int32), everything, notes, summarised)
    digest = _digest(labels)
    for directory, record, source in sources:
        if record["status"] != "COMPLETED":
            continue
        trial_id = record["trial_id"]
        if not directory.val_probabilities.is_file():
            notes.append(f"trial {trial_id} has no val_probabilities.npy; left out")
            continue
        if not directory.model.is_file():
            notes.append(f"trial {trial_id} kept no model.keras (Search(keep_models='best')); left out")
            continue
        if source == FETCHED:
            theirs = _load_labels(directory.path / "val_labels.npy")
            if theirs is None or _digest(theirs) != digest:
                notes.append(f"trial {trial_id} of the study was validated on other val images; left out")
                continue
        try:
            rows = np.load(directory.val_probabilities, mmap_mode="r").shape[0]
        except (OSError, ValueError, EOFError):
            notes.append(f"trial {trial_id}'s val_probabilities.npy cannot be read; left out")
            continue
        if rows != len(labels):
            notes.append(f"trial {trial_id}: {rows} val predictions for {len(labels)} val labels; left out")
            continue
        trials[trial_id] = Trial(record, directory.model, directory.val_probabilities, source)
    fetched = sum(1 for t in trials.values() if t.source == FETCHED)
    if fetched:
        notes.append(f"{fetched} of the {len(trials)} trials ran on other workers of study "
                     f"{saved.record.get('study')!r} and were fetched from the tracking store")
    return Gathered(trials, labels, everything, notes, summarised)


def _missing(in_study: list[StudyTrial] | None, have: set[str], name: Any, notes: list[str]) -> list[dict[str, Any]]:
    """The records (summaries) of the study's finished trials gathered from nowhere else; a note names each."""
    if in_study is None:
        return []
    kept = []
    for t in sorted(in_study, key=lambda t: t.trial_id):
        if t.trial_id in have:
            continue
        if t.record is not None:
            kept.append({**t.record, "trial_id": t.trial_id})
            notes.append(f"trial {t.trial_id} of study {name!r} ({t.state}, ran on {t.ran_on}) is neither here nor "
                         "in the tracking store: listed from the study's summary; its files are unreachable, "
                         "so the ensemble cannot use it")
        else:
            notes.append(f"trial {t.trial_id} of study {name!r} ({t.state}, ran on {t.ran_on}) is missing: neither "
                         "here, in the tracking store nor summarised in the study")
    return kept
