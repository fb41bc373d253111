"""The heartbeat process: it beats the trials its worker names last, however fast it names them."""

from __future__ import annotations

import os
import signal
import time

import optuna

from search import compat
from search.liveness.heartbeat import Heartbeat


def test_a_trial_named_right_after_another_is_beaten_at_once(tmp_path):
    from optuna.storages.journal import JournalFileBackend

    path = str(tmp_path / "study.journal")
    study = optuna.create_study(storage=optuna.storages.JournalStorage(JournalFileBackend(path)))
    first, second = study.ask(), study.ask()
    beats = Heartbeat(path, interval=0.5)
    try:
        beats.beat([compat.trial_id(first)])
        deadline = time.monotonic() + 30
        while "heartbeat" not in study.trials[0].user_attrs and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "heartbeat" in study.trials[0].user_attrs
        # A trial's end and the next trial, as a worker names them: both lines reach the pipe
        # before the heartbeat process reads (it is stopped meanwhile, so they surely do).
        os.kill(beats._process.pid, signal.SIGSTOP)
        beats.beat([])
        beats.beat([compat.trial_id(second)])
        os.kill(beats._process.pid, signal.SIGCONT)
        time.sleep(2.0)
        trials = study.get_trials()
        assert "heartbeat" in trials[1].user_attrs, "the second trial was never beaten"
        assert time.time() - trials[1].user_attrs["heartbeat"] < 1.5
        # The first trial is no longer named: its beats stopped.
        assert time.time() - trials[0].user_attrs["heartbeat"] > 1.5
    finally:
        beats.stop()
