"""The bottom layer: the types every other part of the package shares, and nothing else.

- `status`: `TrialStatus`, every status a trial or a search ends with, and its word in
  MLflow, Optuna and trials.csv.
- `hooks`: what a search tells observers (tracking, progress, tables) and the records it passes.
- `record`: `TrialRecord`, a trial's result.json, read and written by one pair of functions.
- `options`: the typed settings of an Optuna search (`Search.options`), and its pruners.
- `algorithms`: the search algorithms and which library runs each; `durations`: "2h", "90m".

Modules here import nothing from the rest of `search` but `search.errors` when they load.
"""
