"""`python -m search.run SPACE --workers N`: N workers of one Optuna study on this machine.

Each worker is the same command without `--workers`, in a process of its own: they share one
study (the runs folder's journal file, or `--storage`) and one runs folder, and their own
claim logic makes exactly one of them promote the champion. With at least N GPUs each
worker sees only its own (`CUDA_VISIBLE_DEVICES`); with fewer, they take turns on the ones
there are, each growing its memory as needed; with none, they share the CPU.

This process imports neither TensorFlow nor the space: it must not take a GPU for itself,
and starting N workers should not wait for one more TensorFlow import. So what it checks up
front (an Optuna algorithm, the space file parses) it reads from the command line and the
space file's text; the workers check everything else, as any search does.

Every line a worker prints comes out prefixed with it (`[w1] ...`). Ctrl-C or SIGTERM is
passed on to every worker, which stops as a single search does (re-running the command
resumes); a second one kills them. The exit status is the worst of the workers'.
"""

from __future__ import annotations

import argparse
import ast
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from search.core.algorithms import ALGORITHMS, OPTUNA_ALGORITHMS, uses_optuna
from search.engine import interrupts
from search.errors import SearchError

def without_workers(argv: Sequence[str]) -> list[str]:
    """The worker's command line: the launcher's, less `--workers N` (the parser takes no
    abbreviation of it, so these two forms are all there are)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def _space_algorithm(path: Path) -> str | None:
    """`Search(algorithm=...)` as the space file writes it (a literal), without importing it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as e:
        raise SearchError(f"{path}, line {e.lineno}: {e.msg}; fix the space file.") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Search":
            for keyword in node.keywords:
                if keyword.arg == "algorithm" and isinstance(keyword.value, ast.Constant):
                    return str(keyword.value.value)
    return None


def _sets(items: Sequence[str]) -> dict[str, str]:
    """`--set NAME=VALUE` items as {NAME: VALUE} (the last one of a name wins, as for the worker)."""
    return {name.strip(): value.strip().strip("'\"") for name, sep, value in (i.partition("=") for i in items) if sep}


def algorithm_of(args: argparse.Namespace, space: Path) -> str | None:
    """The search's algorithm as the worker will see it: --algorithm, else --set algorithm=,
    else the space file's, else Search's default; None when the file computes it."""
    from search.declare import Search

    chosen = args.algorithm or _sets(args.set).get("algorithm")
    if chosen:
        return str(chosen)
    written = _space_algorithm(space)
    if written is not None:
        return written
    text = space.read_text(encoding="utf-8")
    return str(Search.__dataclass_fields__["algorithm"].default) if "algorithm" not in text else None


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPUs this machine lets its processes use, as CUDA_VISIBLE_DEVICES entries: the
    ones CUDA_VISIBLE_DEVICES already names, else every one `nvidia-smi -L` lists."""
    env = dict(os.environ if env is None else env)
    if "CUDA_VISIBLE_DEVICES" in env:
        given = [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        return [] if given in ([], ["-1"]) else given
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listed.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(listed.stdout.splitlines()) if line.startswith("GPU ")]


def placements(workers: int, gpus: list[str]) -> list[dict[str, str]]:
    """Each worker's environment additions: its own GPU when there are enough, else turns on
    the ones there are (memory grown as needed, so several fit on one), else nothing (CPU)."""
    if not gpus:
        return [{} for _ in range(workers)]
    if len(gpus) >= workers:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i]} for i in range(workers)]
    return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], "TF_FORCE_GPU_ALLOW_GROWTH": "true"} for i in range(workers)]


def check(args: argparse.Namespace) -> Path:
    """The mistakes the launcher can see before starting anyone, each one line with the fix.
    `args`: the command line as search.run's parser read it."""
    workers = args.workers
    if workers < 1:
        raise SearchError(f"--workers {workers}: give the number of workers to start, 1 or more.")
    for flag, given, why in (("--fresh", args.fresh, "a fresh search owns its runs folder until it ends, so the other workers could "
                                  "not join; start over first with the same command without --workers, e.g. "
                                  "with --fresh --max-trials 1, then add --workers"),
                      ("--dry-run", args.dry_run, "run --dry-run without --workers")):
        if given:
            raise SearchError(f"--workers cannot be combined with {flag}: {why}.")
    if args.space is None:
        raise SearchError("--workers needs a space file, e.g. python -m search.run spaces/digits.py --workers 2.")
    space = Path(args.space)
    if not space.is_file():
        raise SearchError(f"{space}: no such space file; pass the path of a space file, e.g. spaces/digits.py.")
    algorithm = algorithm_of(args, space)
    if algorithm is not None and algorithm in ALGORITHMS and not uses_optuna(algorithm):
        raise SearchError(f"--workers needs an Optuna algorithm ({', '.join(OPTUNA_ALGORITHMS)}) to share one study, "
                          f"not {algorithm!r}: add --algorithm tpe.")
    return space


def _forward(stream: IO[bytes], prefix: bytes, out: IO[bytes], lock: threading.Lock) -> None:
    """Copy a worker's output line by line, each line prefixed with the worker."""
    for line in iter(stream.readline, b""):
        with lock:
            out.write(prefix + (line if line.endswith(b"\n") else line + b"\n"))
            out.flush()
    stream.close()


def _die_with_parent() -> None:
    """In the worker, before it runs: SIGTERM when the launcher dies (Linux), so a launcher
    killed outright leaves no worker running on its own."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal s: 128 + s, as a shell says


def launch(argv: Sequence[str], args: argparse.Namespace) -> int:
    """Start `args.workers` workers running `argv` without --workers; wait for all; the worst
    exit status. `args` is `argv` as search.run's parser read it: every option a worker takes
    passes through unchanged."""
    check(args)
    workers = args.workers
    command = [sys.executable, "-m", "search.run", *without_workers(argv)]
    gpus = visible_gpus()
    places = placements(workers, gpus)
    where = ("the CPU" if not gpus else f"one GPU each ({', '.join(gpus[:workers])})" if len(gpus) >= workers
             else f"{len(gpus)} GPU(s) in turn")
    print(f"Starting {workers} worker(s) of one study on {where}: python {' '.join(command[1:])}", flush=True)
    lock = threading.Lock()  # one line at a time, whichever worker and stream it comes from
    processes: list[subprocess.Popen[bytes]] = []
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        first = len(received) == 1
        for process in processes:
            if process.poll() is None:
                try:
                    process.send_signal(signum if first else signal.SIGKILL)
                except ProcessLookupError:
                    pass
        with lock:
            print("\nStopping the workers (re-run the same command to resume; again to kill them)." if first
                  else "\nKilling the workers.", flush=True)

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    readers = []
    try:
        for place in places:
            # A session of its own: a terminal's Ctrl-C reaches the launcher alone, which passes it
            # on once, instead of every worker receiving it twice.
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={**os.environ, **place, "PYTHONUNBUFFERED": "1", interrupts.WORKER_ENV: "1"}, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            processes.append(process)
            if received:  # a signal came while starting: this one stops too
                process.send_signal(received[0])
        for index, process in enumerate(processes, 1):
            for stream, to in ((process.stdout, sys.stdout.buffer), (process.stderr, sys.stderr.buffer)):
                assert stream is not None
                reader = threading.Thread(target=_forward, args=(stream, f"[w{index}] ".encode(), to, lock),
                                          daemon=True, name=f"w{index}-output")
                reader.start()
                readers.append(reader)
        # Every worker polled each time, so each is reaped the moment it ends: a dead worker
        # left a zombie keeps its process id, and the others would take it for alive and wait
        # for its trial for ever. Not wait(): the signal handler runs between sleeps.
        while [p for p in processes if p.poll() is None]:
            time.sleep(0.2)
    finally:
        for reader in readers:
            reader.join(timeout=10)
        for s, handler in handlers.items():
            signal.signal(s, handler)
    codes = [_exit_code(p.returncode) for p in processes]
    failed = [f"w{i} exited {c}" for i, c in enumerate(codes, 1) if c != 0]
    if received:
        print(f"Stopped: {', '.join(failed) or 'every worker had finished'}. Re-run the same command to resume.",
              file=sys.stderr, flush=True)
    elif failed:
        print(f"error: {len(failed)} of {workers} worker(s) failed: {', '.join(failed)}", file=sys.stderr, flush=True)
    else:
        print(f"All {workers} workers finished.", flush=True)
    return max(codes)
