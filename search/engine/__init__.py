"""The search engine: trials handed out, trained, recorded and reported.

- `runner`: `run_search`, one search from its space to its outcome.
- `tuner`: the search loop, and the order in which a trial's end is written; `callbacks`:
  what it adds to each trial's training.
- `source`: the `TrialSource` protocol the loop asks trials of; `factory`: the one place that
  picks a source for an algorithm; `kt_source`: Keras Tuner's oracles (`oracles` makes them);
  `optuna_source`: an Optuna study, through `optuna_oracle`, `samplers`, `optuna_storage`
  and `reaper` (the trials of workers that died).
- `trial`: one trial's training (build, compile, schedule, fit under the strategy, save),
  shared by search trials and `search.ensemble --refit`.
- `heartbeat`: a separate process that keeps a worker's trials alive in a shared study.
- `claims`: one winner among many workers (the promotion of a shared study).
- `progress`: the console lines (the hooks it implements live in `search.core.hooks`).
- `validation`: one validation pass per epoch with the probabilities ensembles need.
- `memory`: giving a trial's memory back; `strategy`: TPU, GPUs or CPU.
"""
