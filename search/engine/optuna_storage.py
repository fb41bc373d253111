"""Where an Optuna study lives: a journal file or a database many workers share, opened and
called with retries for the errors a shared storage gives for a moment."""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import tenacity
from optuna.storages import RetryHeartbeatStaleTrialCallback

from search.errors import SearchError
from search.redaction import redact
from search.runs.layout import SpaceDir

# The storage's RetryHeartbeatStaleTrialCallback is marked experimental: saying so on every start
# (before the one line of a refused storage, for one) helps no one.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

T = TypeVar("T")

# Storage errors worth a retry: a lost connection, a lock, a race creating tables.
_RETRIES = 5
# A lost connection: retried for as long as a database restart takes, a bounded number of times.
RECONNECT_FOR = 120.0
_RECONNECTS = 40
# The Python driver each RDB URL form needs, and the package that provides it.
DRIVERS = {
    "postgresql": ("psycopg", "psycopg[binary]"),
    "postgresql+psycopg": ("psycopg", "psycopg[binary]"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "pymysql"),
}


def lost_connection(error: BaseException) -> bool:
    """The database went away for a moment (a restart, a failover, a cut connection): SQLAlchemy's
    OperationalError or InterfaceError, or Optuna's StorageInternalError wrapping one; or the
    PendingRollbackError of the next call on a session whose connection was cut mid-transaction
    (Optuna rolls that session back as the call fails, so the retry starts clean)."""
    import sqlalchemy

    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                             sqlalchemy.exc.PendingRollbackError)) or (
                isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated):
            return True
        if not isinstance(seen, optuna.exceptions.StorageInternalError):
            return False
        seen = seen.__cause__ or seen.__context__
    return False


def _transient(error: BaseException) -> bool:
    """Worth another try: a lost connection; on a journal file, an OS error (a lock, a full disk)."""
    return lost_connection(error) or isinstance(error, OSError)


def _stop(state: tenacity.RetryCallState) -> bool:
    """A lost connection is retried for as long as a database takes to restart; any other
    transient error a few times only."""
    error = state.outcome.exception() if state.outcome is not None else None
    if error is not None and lost_connection(error):
        return state.attempt_number >= _RECONNECTS or (state.seconds_since_start or 0.0) >= RECONNECT_FOR
    return state.attempt_number >= _RETRIES + 1


def call_with_retries(call: Callable[[], T]) -> T:
    """A storage call, retried on the errors a shared database or file can give for a moment
    (a lost connection for up to RECONNECT_FOR seconds, a lock or a full disk a few times):
    never on Optuna's answers (a trial another worker ended, a value or key it refuses) nor
    on any other error of SQLAlchemy (an IntegrityError, a ProgrammingError)."""
    retrying = tenacity.Retrying(
        stop=_stop, wait=tenacity.wait_exponential_jitter(initial=0.2, max=8, jitter=0.5),
        retry=tenacity.retry_if_exception(_transient), reraise=True,
        before_sleep=_say_reconnecting, sleep=_nap)
    return retrying(call)


def _nap(seconds: float) -> None:
    """The wait between two tries (looked up at each call, so that a test can skip it)."""
    time.sleep(seconds)


def _say_reconnecting(state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    if error is not None and lost_connection(error) and state.attempt_number == 3:
        print("warning: the Optuna storage does not answer; trying again for up to "
              f"{RECONNECT_FOR:.0f}s.", file=sys.stderr, flush=True)


def tell(study: optuna.Study, trial: optuna.Trial | int, values: list[float] | None = None,
         state: optuna.trial.TrialState | None = None) -> None:
    """`study.tell`, retried on a lost connection. A tell whose answer was lost may have been
    written: when a retry finds the trial already finished in the state told, it is done.
    A trial another process ended first raises `UpdateFinishedTrialError`, whichever error
    Optuna gave (it says `ValueError` when its copy of the study already shows the end)."""
    number = trial if isinstance(trial, int) else trial.number
    expected = state or optuna.trial.TrialState.COMPLETE
    tried = False

    def once() -> None:
        nonlocal tried
        try:
            study.tell(trial, values, state=state)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
            now = next((t.state for t in study.get_trials(deepcopy=False) if t.number == number), None)
            if tried and now == expected:
                return
            if now is not None and now.is_finished():
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"Optuna trial {number} was ended ({now.name}) by another process before this tell") from None
            raise
        finally:
            tried = True

    call_with_retries(once)


def _driver_missing(url: str, error: BaseException) -> SearchError | None:
    """One line naming the package to install, for the ImportError of a missing database driver."""
    scheme = url.split("://", 1)[0].lower()
    # Optuna wraps SQLAlchemy's ImportError in one of its own that names no module.
    cause: BaseException | None = error
    while cause is not None and not getattr(cause, "name", None):
        cause = cause.__cause__
    missing = str(getattr(cause, "name", "") or "")
    if not isinstance(error, ImportError) or not missing:
        return None
    module, package = DRIVERS.get(scheme, (missing, None))
    if module.split(".")[0] != missing.split(".")[0]:
        return None
    if package is None:
        return SearchError(f"--storage {redact(url)}: the {scheme} driver is not installed (no module {missing!r}): "
                           f"pip install the package that provides {missing}.")
    other = " (or write postgresql+psycopg2://... with psycopg2-binary)" if scheme == "postgresql" else ""
    return SearchError(f"--storage {redact(url)}: the {scheme} driver is not installed: pip install '{package}'{other}.")


def open_storage(url: str | None, space_dir: Path, *, heartbeat_interval: float = 30,
                 grace_period: float = 120) -> optuna.storages.BaseStorage:
    """An RDB URL (postgresql://, mysql://, sqlite:///) or a journal file path; None: the space's journal.

    Workers that start at once on an empty database race to create Optuna's tables; the
    loser's error is retried, so every worker starts."""
    if not (url and "://" in url):
        from search.engine import journal

        path = Path(url) if url else SpaceDir(space_dir).journal
        path.parent.mkdir(parents=True, exist_ok=True)
        return journal.open_journal(path, repair_torn_tail=_repair_torn_tail)
    import sqlalchemy

    # Optuna's heartbeat on every RDB, SQLite included: the reaper asks it which trials are stale.
    options: dict[str, Any] = {"heartbeat_interval": max(1, round(heartbeat_interval)),
                               "grace_period": max(1, round(grace_period)),
                               "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback()}
    if not url.startswith("sqlite"):
        options["engine_kwargs"] = {"pool_pre_ping": True}
    def racing(e: BaseException) -> bool:
        """Workers creating the tables at once: the loser's error passes when retried."""
        return isinstance(e, sqlalchemy.exc.IntegrityError) or (
            isinstance(e, (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError))
            and ("already exists" in str(e) or "locked" in str(e)))

    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(_RETRIES + 1),
                                 wait=tenacity.wait_incrementing(start=0.3, increment=0.3) + tenacity.wait_random(-0.2, 0.2),
                                 retry=tenacity.retry_if_exception(racing), reraise=True)
    try:
        return retrying(optuna.storages.RDBStorage, url, **options)
    except ImportError as e:
        raise (_driver_missing(url, e) or e) from None
    except sqlalchemy.exc.ArgumentError as e:
        raise SearchError(f"--storage {redact(url)} is not a database URL SQLAlchemy knows ({e}); e.g. "
                          "postgresql://user:PASSWORD@host/db, or a journal file path.") from None
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as e:
        first = (str(getattr(e, "orig", e)).strip().splitlines() or [""])[0]
        raise SearchError(f"cannot open the Optuna storage {redact(url)}: {redact(first)}") from None


def _repair_torn_tail(path: Path) -> bool:
    """Cut a journal's last line when a write was cut short (a full disk, a power loss); whether it did.

    Optuna skips such a line while reading but appends the next record right after it, which
    makes one line of two halves that no later read can parse: the whole study is then lost.
    The torn bytes are kept beside the journal; done under the journal's own lock, so no
    worker is appending at that moment."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, 2)
        if f.read(1) == b"\n":
            return False
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut == len(data):
            return False  # another worker repaired it first
        torn = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        torn.write_bytes(data[cut:])
        with path.open("r+b") as f:
            f.truncate(cut)
            os.fsync(f.fileno())
    finally:
        lock.release()
    print(f"warning: the last line of {path} was cut short by an interrupted write; it is kept in {torn.name} "
          "and the study goes on from the lines before it.", file=sys.stderr, flush=True)
    return True


def storage_for_children(url: str | None, space_dir: Path) -> str:
    """What the heartbeat process and claims open: the URL, or the journal file's path."""
    return url if url and "://" in url else str(Path(url) if url else SpaceDir(space_dir).journal)
