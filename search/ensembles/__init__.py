"""Ensembles: from finished trials to one servable model (`python -m search.ensemble`).

- `selection`: top-k averaging and greedy selection from saved val probabilities.
- `model`: the ensemble as one Keras model; predicting a split.
- `refit`: retraining the chosen members on train+val (`--refit`).
- `promote`: choosing, saving and registering the champion.
"""
