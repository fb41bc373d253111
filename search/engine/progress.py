"""Console progress: what is running, what it is trying, how it went, the best so far."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from search import metrics
from search.core.hooks import SearchHooks, SearchInfo, TrialInfo, TrialResult
from search.core.status import COMPLETED, FAILED
from search.results.records import FINISHED, load_records
from search.runs.layout import TrialDir


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


class ConsoleProgress(SearchHooks):
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.best: tuple[float, str] | None = None
        self.started = time.monotonic()

    def say(self, text: str, stream: TextIO | None = None) -> None:
        print(text, file=stream or self.stream, flush=True)

    def on_search_begin(self, search: SearchInfo) -> None:
        s = search.settings
        self.say(
            f"Search {search.name!r}: {s['algorithm']}, up to {s['max_trials']} trials x {s['epochs']} epochs, "
            f"objective {s['objective']} | {search.strategy} | seed {search.seed}"
        )
        self.say(f"Results: {search.space_dir}")
        records = load_records(search.space_dir)
        if records:
            objective = s["objective"]
            for r in records:
                score = r["best"].get(objective)
                if r["status"] == COMPLETED and score is not None:
                    self._offer(score, r["trial_id"], objective)
            best = f"; best {self.best[0]:.4f} (trial {self.best[1]})" if self.best else ""
            finished = sum(1 for r in records if r["status"] in (*FINISHED, FAILED))
            self.say(f"Resuming: {finished} trial(s) already recorded{best}.")

    def _offer(self, score: float, trial_id: str, objective: str) -> None:
        if self.best is None or metrics.better(score, self.best[0], objective):
            self.best = (score, trial_id)

    def on_trial_begin(self, search: SearchInfo, trial: TrialInfo) -> None:
        values = " ".join(f"{k}={_fmt(v)}" for k, v in trial.values.items())
        self.say(f"\nTrial {trial.trial_id} ({trial.finished} of {trial.total} done): {values}")

    def on_trial_end(self, search: SearchInfo, trial: TrialInfo, result: TrialResult) -> None:
        objective = search.settings["objective"]
        score = result.best.get(objective)
        line = f"Trial {trial.trial_id} {result.status} in {result.seconds:.0f}s"
        stream = None
        if result.status in FINISHED and score is not None:
            if result.status == COMPLETED:  # as best.keras: a pruned trial's score is of fewer epochs
                self._offer(score, trial.trial_id, objective)
            line += f": {objective} {score:.4f}, {result.epochs_run} epochs"
            if result.params:
                line += f", {result.params:,} params"
            if result.note:
                line += f" ({result.note})"
        elif result.error:
            error = TrialDir(trial.dir).error
            line += f": {result.error}" + (f" (traceback: {_short(error)})" if error.exists() else "")
            stream = sys.stderr if result.status == FAILED else None
        if self.best:
            line += f" | best {self.best[0]:.4f} (trial {self.best[1]})"
        self.say(line, stream)

    def on_search_end(self, search: SearchInfo, status: str) -> None:
        minutes = (time.monotonic() - self.started) / 60
        self.say(f"\nSearch {search.name!r} {status.lower()} after {minutes:.1f} min.")


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
