"""MLflow tracking: every search and trial logged as it runs; the promoted model registered.

- `config`: `mlflow.yaml`, the tracking URI, a search's tags (no mlflow import).
- `client`: connecting to a store safely (reachability, a fresh SQLite file, races).
- `tracker`: the search hooks that log runs, metrics, plots and artifacts.
- `registry`: the promoted model's run, its registered version and the `champion` alias.
- `tensorboard`: per-trial TensorBoard logs with the HParams dashboard (`--tensorboard`).
"""
