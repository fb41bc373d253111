"""Successive halving at the probe/fine-tune boundary: which probed trials are fine-tuned.

With `Search(fine_tune_best=f)` every trial of `fine_tune="probe_then_all"` first trains its
head on cached features (its probe, the cheap rung). At the probe's end the trial is ranked
against every probe recorded so far in the runs folder, by any worker, as ASHA promotes
asynchronously: it goes on to fine-tune the whole network when its probe ranks among the best
`f` of them (at least one once `probes_before_fine_tuning` probes are recorded), and otherwise
ends with its probe's result, PRUNED.

Each decision is written to its trial's `probe.json` before the trial goes on, under a lock
the workers share, so decisions derive from records: a trial run again (its process was
killed while it fine-tuned) follows its recorded decision instead of deciding anew.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from search import metrics
from search.declare import Search
from search.runs import atomic
from search.runs.layout import SpaceDir
from search.runs.locks import FolderLock

RECORD = "probe.json"


@dataclasses.dataclass(frozen=True)
class Decision:
    """A probed trial's rung: its probe score, its rank among the probes, whether it fine-tunes."""

    trial_id: str
    score: float
    rank: int  # 1: the best of the probes recorded when it was decided
    probes: int  # the probes it was ranked among, itself included
    fine_tune: bool
    fraction: float
    min_probes: int = 1

    @property
    def note(self) -> str:
        """What the console line, trials records and MLflow say about the trial's stages."""
        where = f"probe {self.rank} of {self.probes}"
        if self.fine_tune:
            return f"fine-tuned: {where}"
        if self.probes < self.min_probes:
            return f"probe only: {where}, fewer than the {self.min_probes} probes needed to fine-tune any"
        return f"probe only: {where}, not in the best {self.fraction:.0%}"

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fine_tunes(score: float, others: Sequence[float], *, fraction: float, min_probes: int,
               objective: str) -> tuple[bool, int, int]:
    """(fine-tune?, rank, probes): whether a probe scoring `score` ranks in the best `fraction`
    of itself and the recorded probes `others`; ties rank it first. None fine-tunes before
    `min_probes` probes; from then on at least the best one does."""
    probes = len(others) + 1
    rank = 1 + sum(1 for other in others if metrics.better(other, score, objective))
    if probes < min_probes:
        return False, rank, probes
    kept = max(1, math.floor(probes * fraction + 1e-9))
    return rank <= kept, rank, probes


class Rung:
    """The decisions of one search's runs folder."""

    def __init__(self, folder: SpaceDir, search: Search):
        assert search.fine_tune_best is not None
        self.folder, self.objective = folder, search.objective
        self.fraction = float(search.fine_tune_best)
        self.min_probes = search.probes_before_fine_tuning

    def recorded(self) -> dict[str, Decision]:
        """Every decision on record, by trial id (a record that cannot be read is no probe)."""
        found = {}
        for trial in self.folder.trial_dirs():
            decision = _read(trial.path / RECORD)
            if decision is not None:
                found[trial.id] = decision
        return found

    def decide(self, trial_id: str, score: float, earlier: Sequence[str] = ()) -> Decision:
        """The decision for `trial_id` whose probe scored `score`: the one on record for it (or
        for `earlier`, the trials it runs again), or a new one, recorded before it is returned."""
        with FolderLock(self.folder.path / ".probes.lock", doing="ranking a probe", wait=120):
            recorded = self.recorded()
            for known in (trial_id, *earlier):
                if known in recorded:
                    decision = dataclasses.replace(recorded[known], trial_id=trial_id)
                    break
            else:
                others = [d.score for t, d in recorded.items() if t not in (trial_id, *earlier)]
                go_on, rank, probes = fine_tunes(score, others, fraction=self.fraction, min_probes=self.min_probes,
                                                 objective=self.objective)
                decision = Decision(trial_id, float(score), rank, probes, go_on, self.fraction, self.min_probes)
            path = self.folder.trial(trial_id).path / RECORD
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(path, decision.as_json())
            return decision

    def gate(self, trial_id: str, runs_again: Sequence[str], decided: dict[str, Decision]) -> Callable[[Any], bool]:
        """What `search.engine.trial.train` asks at the end of a trial's probe (given the probe's
        `Trained`): whether it fine-tunes. The decision is also kept in `decided`."""
        from search.engine.trial import best_metrics  # TensorFlow: only once a search trains

        def fine_tune(probed: Any) -> bool:
            score = best_metrics(probed.history, self.objective).get(self.objective)
            if score is None:
                return True  # nothing to rank it by (no validation): trained as declared
            decided[trial_id] = decision = self.decide(trial_id, score, runs_again)
            return decision.fine_tune

        return fine_tune


def _read(path: Any) -> Decision | None:
    try:
        return Decision(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
