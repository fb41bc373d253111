"""Every status a trial or a search ends with, and how each one is said elsewhere.

One word each, mapped once to MLflow's run statuses, Optuna's trial states and trials.csv's
`status` column: a status added here without its three words fails `tests/engine/test_status.py`.
"""

from __future__ import annotations

import enum


class TrialStatus(enum.StrEnum):
    """A `str`: compares equal to, and is written as, the word itself."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"  # trained and scored
    PRUNED = "PRUNED"  # stopped early by Optuna's pruner, scored on the epochs it ran
    FAILED = "FAILED"  # an error; a search that stopped on errors
    KILLED = "KILLED"  # interrupted: the trial runs again on resume
    STOPPED = "STOPPED"  # a search ended by its time budget

    @property
    def mlflow(self) -> str:
        """The MLflow run status (RUNNING, FINISHED, FAILED, KILLED: MLflow has no other)."""
        return _MLFLOW[self]

    @property
    def optuna(self) -> str:
        """The name of the `optuna.trial.TrialState` a trial of this status is told as."""
        return _OPTUNA[self]

    @property
    def csv(self) -> str:
        """The word in trials.csv's `status` column."""
        return self.value


_MLFLOW = {
    TrialStatus.RUNNING: "RUNNING", TrialStatus.COMPLETED: "FINISHED", TrialStatus.PRUNED: "FINISHED",
    TrialStatus.FAILED: "FAILED", TrialStatus.KILLED: "KILLED", TrialStatus.STOPPED: "FINISHED",
}
# A killed trial's Optuna trial is failed (and queued again) by the next worker that finds its
# process gone; a trial cut by the time budget keeps its best epoch, scored like any other.
_OPTUNA = {
    TrialStatus.RUNNING: "RUNNING", TrialStatus.COMPLETED: "COMPLETE", TrialStatus.PRUNED: "PRUNED",
    TrialStatus.FAILED: "FAIL", TrialStatus.KILLED: "FAIL", TrialStatus.STOPPED: "COMPLETE",
}

RUNNING = TrialStatus.RUNNING
COMPLETED = TrialStatus.COMPLETED
PRUNED = TrialStatus.PRUNED
FAILED = TrialStatus.FAILED
KILLED = TrialStatus.KILLED
STOPPED = TrialStatus.STOPPED

SCORED = frozenset({COMPLETED, PRUNED})  # trained, with metrics worth comparing
ENDED = frozenset({COMPLETED, PRUNED, FAILED})  # recorded for good: never run again
