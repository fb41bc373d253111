"""A process that has imported the tool once and forks a fresh process for each command.

The crash tests and the tests of many workers start dozens of `python -m search.<command>`
processes, and each would spend ~5 s of a 2-core machine importing TensorFlow, Keras Tuner,
Optuna and MLflow before its first trial. This process imports them once, without running
any TensorFlow op (so no thread pools exist yet and a fork is safe), then for each job forks
a child that takes the job's working folder, environment and arguments and runs the
command's `main` as `python -m` would: a real process, with its own pid, files, locks and
exit status, killed by a real SIGKILL when the job's `SEARCH_FAULT` says so.

Protocol: one JSON job per stdin line, {"id", "module", "args", "env", "cwd", "stdout",
"stderr"} (the last two: the files its output goes to); one JSON line per event on stdout:
{"id", "pid"} when forked, {"id", "code"} when it ended (negative: killed by that signal).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading

import search.ensemble  # noqa: F401 - everything a command imports, imported once here
import search.report  # noqa: F401
import search.run  # noqa: F401
from search.engine import runner  # noqa: F401
from search.ensembles import promote  # noqa: F401
from search.tracking import registry, tracker  # noqa: F401

# Held to fork and register a child, and to pop one reaped: a child that ends at once is then
# still found, its "pid" line comes before its "code" line, and no thread is inside a write to
# stdout when a child is forked (the child would inherit that write's lock, held for ever).
_lock = threading.Lock()
_jobs: dict[int, str] = {}


def _say(event: dict) -> None:
    """Write one event line; the caller holds _lock, or no other thread runs yet."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _child(job: dict) -> None:
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdout.reconfigure(line_buffering=True)  # as a terminal shows it: a kill loses no finished line
    from search.runs import faults

    faults.configure(os.environ.get(faults.ENV, ""))
    sys.argv = [f"search.{job['module']}", *job["args"]]
    try:
        code = importlib.import_module(f"search.{job['module']}").main(job["args"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - a crash of the command: its traceback goes to the log
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


def _reap() -> None:
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            threading.Event().wait(0.05)
            continue
        with _lock:
            job = _jobs.pop(pid, None)
            if job is not None:
                _say({"id": job, "code": os.waitstatus_to_exitcode(status)})


def main() -> None:
    _say({"ready": True})
    threading.Thread(target=_reap, daemon=True).start()
    for line in sys.stdin:
        job = json.loads(line)
        with _lock:
            pid = os.fork()
            if pid == 0:
                _child(job)
            _jobs[pid] = job["id"]
            _say({"id": job["id"], "pid": pid})


if __name__ == "__main__":
    main()
