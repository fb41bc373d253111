"""Tracking that heals: a store that stops answering is "lost" once, and tried again at each
trial's start and end and at the search's end; once it answers, every trial this runs folder
recorded whose run is missing or unfinished is sent (found by its `trial_id` tag, never
twice), and runs an outage left RUNNING end with their record's status. The trial records
are the truth; MLflow is their projection (see search.tracking.tracker)."""

from __future__ import annotations

import json
import sys
import threading
from typing import TYPE_CHECKING, Any

from search.core.hooks import OWN_MODEL, SearchInfo, TrialInfo, TrialResult
from search.core.status import COMPLETED, FAILED, PRUNED
from search.hparams import TrialConfig
from search.liveness import workers
from search.redaction import redact
from search.runs.layout import SpaceDir
from search.runs.locks import FolderLock
from search.tracking import client as clients
from search.tracking.config import TrackingConfig

# The run statuses that say a trial's run is complete; any other run of an ended trial is sent again.
ENDED_RUN = ("FINISHED", "FAILED")
# Tag of a trial run whose trial/ files all reached the store (they go in the background).
FILES_SENT = "trial_files"
# Runs that a tracker of this process has open: any other run tagged with this process is stale.
OPEN: set[str] = set()


def _why(error: BaseException) -> str:
    if isinstance(error, clients.Unavailable):
        return str(error)
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {redact(first)}"[:300]


class Healing:
    """The part of the MLflow tracker that loses the store and finds it again."""

    config: TrackingConfig
    client: Any
    uri: str
    parent_id: str
    experiment_id: str
    lost: bool
    worker: workers.Worker
    _space_dir: Any
    _runs: dict[str, str]
    _ended: set[str]
    _lost_lock: threading.Lock

    if TYPE_CHECKING:
        def _begin(self, search: SearchInfo) -> None: ...

        def _end_trial(self, search: SearchInfo, trial: TrialInfo, result: TrialResult, *,
                       background: bool = True) -> None: ...

        def _log_trial_files(self, run_id: str, search: SearchInfo, trial: TrialInfo, result: TrialResult,
                             background: bool = True) -> None: ...

    def _why(self, error: BaseException) -> str:
        gone = clients.unreachable(self.uri, timeout=1.0) if self.uri else None
        return f"cannot reach the tracking server {redact(self.uri)}: {gone}" if gone else _why(error)

    def _lose(self, reason: str) -> None:
        with self._lost_lock:
            if self.lost:
                return
            self.lost = True
        print(f"warning: MLflow tracking lost ({reason}). The search goes on; its trials are kept in "
              f"{self._space_dir}/trials and sent when the store answers again.", file=sys.stderr, flush=True)

    def _heal(self, search: SearchInfo, *, wait: bool = False) -> bool:
        """Whether the lost store answers again; if so, everything it missed is sent. With
        `wait` (the search's end), the store is waited for up to `reconnect_seconds`."""
        import tenacity

        def attempt() -> bool:
            if clients.unreachable(self.uri, timeout=1.0):
                return False
            try:
                self.client = clients.connect(self.uri)
                if not self.parent_id:  # lost before the search's run existed
                    self._begin(search)
                else:
                    self.client.update_run(self.parent_id, status="RUNNING")
                sent = self._send_unsent(search)
            except Exception:  # noqa: BLE001 - not back yet (or for a moment only)
                return False
            self.lost = False
            print(f"MLflow tracking back: {sent} trial{'s' * (sent != 1)} sent.", file=sys.stderr, flush=True)
            return True

        # Waited for only after an outage: a store never reached in this search is not coming.
        if not wait or not self.parent_id or self.config.reconnect_seconds <= 0:
            return attempt()
        print(f"MLflow: waiting up to {self.config.reconnect_seconds:.0f} s for the tracking store to answer "
              "(mlflow.yaml: reconnect_seconds)...", file=sys.stderr, flush=True)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.config.reconnect_seconds),
            wait=tenacity.wait_exponential(multiplier=1, max=10), retry=tenacity.retry_if_result(lambda ok: not ok),
            retry_error_callback=lambda state: False)
        if retrying(attempt):
            return True
        print(f"warning: MLflow tracking is still lost: the trials of {self._space_dir}/trials not sent yet are sent "
              "by the next start of this search (the same command).", file=sys.stderr, flush=True)
        return False

    def _send_unsent(self, search: SearchInfo) -> int:
        """Send the trials this folder recorded whose run is missing or unfinished (an outage of
        the store, or a process killed between a trial's record and its hooks): each ended
        trial gets exactly one ended run, its files too. Under a lock of the runs folder, so
        that its workers never send one trial twice; returns how many trials were sent."""
        from search.results.records import load_records, result_of

        sent = 0
        with FolderLock(SpaceDir(search.space_dir).path / ".mlflow-send.lock", doing="sending trials to MLflow",
                        wait=120):
            logged = self.client.search_runs(
                [self.experiment_id], max_results=5000, order_by=["attributes.start_time DESC"],
                filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}' and tags.trial_id != ''")
            runs: dict[str, list[Any]] = {}
            for run in logged:
                runs.setdefault(run.data.tags["trial_id"], []).append(run)
            self._ended |= {t for t, found in runs.items() if any(r.info.status in ENDED_RUN for r in found)}
            for record in load_records(search.space_dir):
                trial_id = record["trial_id"]
                if record["status"] not in (COMPLETED, PRUNED, FAILED):
                    continue
                found = runs.get(trial_id, [])
                complete = [r for r in found if r.info.status in ENDED_RUN]
                if complete:
                    if record["status"] != FAILED and self.config.log_trial_artifacts \
                            and complete[0].data.tags.get(FILES_SENT) == "false":
                        self._log_trial_files(complete[0].info.run_id, search, self._info(search, record),
                                              result_of(record), background=False)
                        sent += 1
                    continue
                running = [r for r in found if r.info.status == "RUNNING"]
                ours = [r for r in running if self._abandoned(r, trial_id)]
                if running and not ours:
                    continue  # a live process of this folder is ending it
                reuse = ours or [r for r in found if r.info.status == "KILLED"]
                if reuse:  # a run the outage (or a kill) left unfinished: ended with the record's status
                    self._runs[trial_id] = reuse[0].info.run_id
                    OPEN.add(reuse[0].info.run_id)
                self._end_trial(search, self._info(search, record), result_of(record), background=False)
                sent += 1
        return sent

    def _abandoned(self, run: Any, trial_id: str) -> bool:
        """Whether a RUNNING run of an ended trial is this process's, or its process is gone."""
        if self._runs.get(trial_id) == run.info.run_id:
            return True
        try:
            owner = workers.Worker.from_record(json.loads(run.data.tags.get("worker", "null")))
        except ValueError:
            return False
        return owner == self.worker or workers.alive(owner) is False

    @staticmethod
    def _info(search: SearchInfo, record: dict[str, Any]) -> TrialInfo:
        return TrialInfo(trial_id=record["trial_id"], number=int(record.get("number") or 0), total=0,
                         values=dict(record.get("values") or {}),
                         config=TrialConfig.from_values(record.get("config") or {}),
                         dir=SpaceDir(search.space_dir).trial(record["trial_id"]).path,
                         epochs=int(record.get("epochs_run") or 1), own_model=record.get("model") == OWN_MODEL)
