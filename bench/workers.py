"""What sharing one study among workers costs: trials/s and coordination per trial.

    .venv/bin/python bench/workers.py [--workers 1,2,4] [--trials 24] [--storage journal,postgresql]
                                      [--postgres URL] [--quick]

Runs `python -m search.run bench/spaces/idle.py --workers W` (one machine, one runs folder)
for each storage and worker count, on trials that do almost nothing (one step of a dense
layer on 32 px digits, MLflow and the ensemble off), so that everything around the trials
shows: asking the study for a trial, telling it the result, reaping dead workers, the
heartbeat, and the search's own per-trial work (saving the model, the record, trials.csv,
freeing memory). Storages: the journal file (the default), and PostgreSQL: a fresh database
per run on --postgres URL (a server where that user may CREATE DATABASE), else on a
throwaway cluster started like the tests' (tests/servers/clusters.py).

Per trial, from the study's own timestamps and the trial records: its cycle is the time from
its worker asking for it to that worker asking for the next one; coordination = cycle minus
the trial's training time (the record's `seconds`); each worker's last trial has no next
ask and is left out. The target: coordination below 1% of a 5-minute trial (3 s). Also
checked in every run: exactly the asked trials finished, each recorded once, by the worker
the study gave it to (none lost, none run twice). Prints a table and writes
runs/bench/workers.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPACE = REPO / "bench" / "spaces" / "idle.py"
TARGET_SECONDS = 3.0  # 1% of a 5-minute trial


class _Postgres:
    """Fresh databases: on a given server, or on a throwaway cluster of the tests' kind."""

    def __init__(self, url: str | None):
        self.url, self.cluster, self._count = url, None, 0
        if url is None:
            sys.path.insert(0, str(REPO / "tests"))
            from servers.clusters import Postgres

            self.cluster = Postgres().start()

    def database(self) -> str:
        self._count += 1
        name = f"bench_workers_{os.getpid()}_{self._count}"
        if self.cluster is not None:
            return self.cluster.database(name)
        import sqlalchemy as sa

        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as db:
            db.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return str(sa.engine.make_url(self.url).set(database=name).render_as_string(hide_password=False))

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


def _study_trials(storage: str) -> list[Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if "://" not in storage:
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage))  # type: ignore[assignment]
    return optuna.load_study(study_name="idle", storage=storage).get_trials(deepcopy=False)


def _worker(trial: Any) -> str:
    record = trial.user_attrs.get("worker") or {}
    return f"{record.get('host')}:{record.get('pid')}"


def measure(kind: str, storage: str | None, workers: int, trials: int, data: Path, runs: Path) -> dict[str, Any]:
    """One run of `workers` workers on `trials` trials; its figures and checks."""
    command = [sys.executable, "-m", "search.run", str(SPACE), "--data", str(data), "--max-trials", str(trials),
               "--runs-dir", str(runs), "--quiet", "--no-tracking", "--no-ensemble", "--workers", str(workers)]
    if storage:
        command += ["--storage", storage]
    started = time.time()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""})
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"{kind} x{workers} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    study = _study_trials(storage or str(runs / "idle" / "optuna.journal"))
    finished = [t for t in study if t.state.name == "COMPLETE"]
    surplus = [t for t in study if t.state.name == "FAIL" and t.user_attrs.get("surplus")]
    records = {}
    for path in sorted((runs / "idle" / "trials").glob("*/result.json")):
        record = json.loads(path.read_text())
        records[record["trial_id"]] = record
    # None lost, none run twice: every finished trial recorded once, by the worker the study gave it to.
    recorded_by = {f"{t.number:04d}": _worker(t) for t in finished}
    wrong = sorted(k for k, w in recorded_by.items() if records.get(k, {}).get("worker") != w)
    checks = {"finished": len(finished), "asked_for": trials, "records": len(records),
              "failed_other_than_surplus": len(study) - len(finished) - len(surplus),
              "recorded_by_another_worker_or_missing": wrong}
    ok = len(finished) == trials == len(records) and not wrong and checks["failed_other_than_surplus"] == 0
    cycles, coordination, inside, between = [], [], [], []
    for name in sorted({_worker(t) for t in finished}):
        mine = sorted((t for t in finished if _worker(t) == name), key=lambda t: t.datetime_start)
        for this, following in zip(mine, mine[1:]):
            cycle = (following.datetime_start - this.datetime_start).total_seconds()
            trained = float(records[f"{this.number:04d}"]["seconds"])
            cycles.append(cycle)
            coordination.append(cycle - trained)
            # Asked to told, less training (saving, the record, the tell); told to the next ask
            # (trials.csv, freeing memory, reaping, the sampler, the ask).
            inside.append((this.datetime_complete - this.datetime_start).total_seconds() - trained)
            between.append((following.datetime_start - this.datetime_complete).total_seconds())
    first = min(t.datetime_start for t in finished).timestamp()
    last = max(t.datetime_complete for t in finished).timestamp()
    train = [float(r["seconds"]) for r in records.values()]
    return {
        "storage": kind, "workers": workers, "trials": len(finished), "ok": ok, "checks": checks,
        "wall_s": round(wall, 1), "startup_s": round(first - started, 1), "search_s": round(last - first, 2),
        "trials_per_s": round(len(finished) / (last - first), 3),
        "train_s_per_trial": round(statistics.mean(train), 3),
        "cycle_s_per_trial": round(statistics.mean(cycles), 3) if cycles else None,
        "coordination_s_per_trial": round(statistics.mean(coordination), 3) if coordination else None,
        "coordination_s_max": round(max(coordination), 3) if coordination else None,
        "in_trial_s": round(statistics.mean(inside), 3) if inside else None,
        "between_trials_s": round(statistics.mean(between), 3) if between else None,
        "surplus_asks": len(surplus),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--workers", default="1,2,4", help="worker counts to compare (default 1,2,4)")
    p.add_argument("--trials", type=int, default=24, help="trials per run (default 24)")
    p.add_argument("--storage", default="journal,postgresql", help="journal, postgresql or both (default)")
    p.add_argument("--postgres", metavar="URL", help="a PostgreSQL server to create the databases on "
                                                      "(default: a throwaway cluster)")
    p.add_argument("--quick", action="store_true", help="1 and 2 workers, 6 trials: proves the script works")
    args = p.parse_args(argv)
    counts = [1, 2] if args.quick else [int(w) for w in args.workers.split(",")]
    trials = 6 if args.quick else args.trials
    kinds = [k.strip() for k in args.storage.split(",")]
    unknown = set(kinds) - {"journal", "postgresql"}
    if unknown:
        p.error(f"--storage: unknown {', '.join(sorted(unknown))}; use journal, postgresql or both")
    from search.data import builtin

    out = REPO / "runs" / "bench"
    data = builtin.materialise("builtin:digits", REPO / "runs")
    postgres = None
    rows = []
    try:
        if "postgresql" in kinds:
            try:
                postgres = _Postgres(args.postgres)
            except Exception as e:  # noqa: BLE001 - the journal rows still run
                print(f"note: no PostgreSQL ({e}); its rows are left out", file=sys.stderr)
                kinds.remove("postgresql")
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch:
            for kind in kinds:
                for workers in counts:
                    runs = Path(scratch) / f"{kind}-{workers}"
                    storage = postgres.database() if kind == "postgresql" and postgres else None
                    row = measure(kind, storage, workers, trials, data, runs)
                    rows.append(row)
                    print(f"{kind} x{workers}: {row['trials_per_s']} trials/s, coordination "
                          f"{row['coordination_s_per_trial']} s/trial, checks {'ok' if row['ok'] else row['checks']}",
                          flush=True)
    finally:
        if postgres is not None:
            postgres.stop()
    for row in rows:
        base = next((r for r in rows if r["storage"] == row["storage"] and r["workers"] == 1), None)
        row["added_vs_1_worker_s"] = (round(row["coordination_s_per_trial"] - base["coordination_s_per_trial"], 3)
                                      if base and row["coordination_s_per_trial"] is not None
                                      and base["coordination_s_per_trial"] is not None else None)
        row["speedup_vs_1_worker"] = round(row["trials_per_s"] / base["trials_per_s"], 2) if base else None
    print(f"\nWorkers sharing one study: {trials} trials of bench/spaces/idle.py each, on {os.cpu_count()} CPU(s)")
    header = (f"{'storage':<11}{'workers':>8}{'trials/s':>10}{'speedup':>9}{'train s':>9}{'cycle s':>9}"
              f"{'coord s':>9}{'inside':>8}{'between':>9}{'max s':>8}{'+vs 1':>8}{'start s':>9}"
              f"  target < {TARGET_SECONDS:.0f} s   checks")
    print(header)
    for r in rows:
        verdict = "met" if r["coordination_s_max"] is not None and r["coordination_s_max"] < TARGET_SECONDS else (
            "missed" if r["coordination_s_max"] is not None else "-")
        print(f"{r['storage']:<11}{r['workers']:>8}{r['trials_per_s']:>10.3f}{r['speedup_vs_1_worker'] or 0:>9.2f}"
              f"{r['train_s_per_trial']:>9.3f}{r['cycle_s_per_trial'] or 0:>9.3f}{r['coordination_s_per_trial'] or 0:>9.3f}"
              f"{r['in_trial_s'] or 0:>8.3f}{r['between_trials_s'] or 0:>9.3f}"
              f"{r['coordination_s_max'] or 0:>8.3f}{r['added_vs_1_worker_s'] or 0:>8.3f}{r['startup_s']:>9.1f}"
              f"  {verdict:<13}{'ok' if r['ok'] else 'FAILED ' + json.dumps(r['checks'])}")
    out.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
              "quick": args.quick, "target_s": TARGET_SECONDS, "rows": rows}
    (out / "workers.json").write_text(json.dumps(result, indent=2))
    print(f"Wrote {out / 'workers.json'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
