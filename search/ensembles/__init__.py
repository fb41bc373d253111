"""Ensembles: from finished trials to one servable model (`python -m search.ensemble`).

- `selection`: top-k averaging and greedy selection from saved val probabilities.
- `model`: the ensemble as one Keras model; predicting a split.
- `refit`: retraining the chosen members on train+val (`--refit`).
- `heldout`: held-out (cross-fitted) scores of each method, and the margin an ensemble must beat.
- `champion`: champion.keras and ensemble.json, bound by its sha256; when a champion may be replaced.
- `table`: how a promotion reads on the console.
- `promote`: choosing, saving and registering the champion.
"""
