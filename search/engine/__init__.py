"""The search engine: trials handed out, trained, recorded and reported.

- `runner`: `run_search`, one search from its space to its outcome.
- `tuner`: Keras Tuner's loop driving our trials, and their records.
- `trial`: one trial's training (build, compile, schedule, fit under the strategy, save),
  shared by search trials and `search.ensemble --refit`.
- `algorithms`: the algorithm vocabulary; `oracles`: Keras Tuner's; `optuna_oracle`: Optuna's.
- `heartbeat`: a separate process that keeps a worker's trials alive in a shared study.
- `claims`: one winner among many workers (the promotion of a shared study).
- `progress`: the console lines (the hooks it implements live in `search.core.hooks`).
- `validation`: one validation pass per epoch with the probabilities ensembles need.
- `memory`: giving a trial's memory back; `strategy`: TPU, GPUs or CPU.
"""
