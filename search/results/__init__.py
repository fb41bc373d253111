"""A search's results, read back: trial records, tables, plots.

- `saved`: a searched space found again from a space file or its name.
- `best`: best.keras kept on the best recorded trial.
- `records`: each trial's `result.json`, `trials.csv` over them, the leaderboard.
- `study`: the finished trials of a whole shared study, fetched from the tracking store.
- `pareto`: the Pareto front of a multi-objective search.
- `importance`: which hyperparameters mattered (Optuna's importance evaluators).
- `plots`: every figure the tool draws.
"""
