"""What a space file declares besides its hyperparameters: its data and its search.

    from search import Data, Search

    data = Data("~/datasets/celeb.zip", hint="kaggle datasets download ...")
    search = Search(algorithm="bayesian", max_trials=30, epochs=45, early_stopping=5)

    def hyperparameters(hp):
        hp.Choice("backbone", ["DenseNet121", "DenseNet201", "ResNet50"])
        ...
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from search import metrics
from search.core import durations
from search.core.options import optuna_options
from search.core.algorithms import ALGORITHMS, uses_optuna
from search.errors import SpaceError, did_you_mean

LAYOUTS = ("auto", "split_folders", "folders", "tfrecord")
MAX_SEED = 999_999  # trials seed Keras with seed * 1000 + their number, which numpy takes below 2**32


@dataclasses.dataclass(frozen=True)
class Data:
    """Where the images are and how they are laid out.

    Layouts (``auto`` picks one from what is on disk; a ``.zip`` is read as the folder it holds):
      - ``split_folders``: ``train/<class>/*`` and ``val/<class>/*`` (optionally ``test/``);
      - ``folders``: ``<class>/*``, split into train/val by ``val_fraction`` (stratified, seeded);
      - ``tfrecord``: Petals-to-the-Metal records (``image`` JPEG bytes, ``class`` int64;
        test records carry ``id``), found by the ``train``/``val``/``test`` globs.
    """

    path: str | None = None
    layout: str = "auto"
    val_fraction: float = 0.2
    # Sub-folder names (split_folders) or globs relative to `path` (tfrecord).
    train: str = "train"
    val: str = "val"
    test: str | None = "test"
    # TFRecords store integer labels only; names make predictions and reports readable.
    class_names: Sequence[str] | None = None
    # Keep decoded, resized images (uint8) in memory across epochs and trials, when they
    # take at most half the free memory; otherwise every epoch decodes them again.
    cache: bool = True
    # Shown when the data is missing: where to get it, how to pass it with --data.
    hint: str | None = None
    # An image whose header declares more pixels than this is left out (and named) before
    # anything decodes it; None: no limit. Decoded, 100 megapixels take 300 MB.
    max_pixels: int | None = 100_000_000
    # Kaggle's Petals download holds tfrecords-jpeg-{192x192,224x224,331x331,512x512}/: the
    # folder nearest this size is read. None: the space's largest image_size (set as it loads).
    tfrecord_size: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise SpaceError(
                f"Data(layout={self.layout!r}) is not a layout.{did_you_mean(self.layout, LAYOUTS)} "
                f"Use one of {', '.join(LAYOUTS)}."
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise SpaceError(f"Data(val_fraction={self.val_fraction!r}) must be in (0, 1), e.g. 0.2.")
        for name in ("max_pixels", "tfrecord_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SpaceError(f"Data({name}={value!r}) must be a whole number >= 1, or None.")


# Successive halving of probe_then_all trials (search.engine.halving): the settings' meaning,
# as docs/vocabulary.md lists them.
HALVING_SETTINGS = {
    "fine_tune_best": ("a fraction in (0, 1]", "with `fine_tune=\"probe_then_all\"`: a trial is fine-tuned only when "
                       "its probe ranks in this best fraction of the probes recorded so far; the others end PRUNED "
                       "with their probe's result (docs/features.md)"),
    "min_probes": ("a whole number (default `ceil(1 / fine_tune_best)`)",
                   "probes recorded before `fine_tune_best` fine-tunes any trial"),
}


@dataclasses.dataclass(frozen=True)
class Search:
    """How to search: algorithm, objective, budget and stopping."""

    algorithm: str = "random"  # one of search.core.algorithms.ALGORITHMS
    objective: str = "val_accuracy"  # one of search.metrics.METRICS
    max_trials: int = 10
    epochs: int = 10
    # Stop a trial after this many epochs without improvement of the objective (None: never).
    early_stopping: int | None = None
    # Cap the steps of each epoch (None: the whole training split). Smoke runs use a few.
    steps_per_epoch: int | None = None
    seed: int = 0
    # "all" keeps every trial's model (needed for ensembles), "best" only the best so far.
    keep_models: str = "all"
    mixed_precision: bool = False
    # XLA compilation of training steps where it applies (a GPU or TPU); off on CPU.
    jit_compile: bool = True
    # Frozen backbones (fine_tune frozen, or probe_then_all's first stage) embed the data once:
    # pooled features kept under runs/<space>/features/, shared by every trial and worker, at
    # most feature_cache_gb (least recently used entries go first).
    feature_cache: bool = True
    feature_cache_gb: float = 20.0
    # With an augmentation policy and a cached backbone: views of each training image kept
    # (view 0 the plain image), one drawn per image per epoch. More views, more variety, and
    # that many backbone passes to build them; 1 trains cached heads on plain images only
    # (the trade-off is measured by bench/cached_views.py).
    cached_views: int = 1
    # Successive halving at the probe/fine-tune boundary (fine_tune="probe_then_all"): every
    # trial trains its head on cached features for probe_epochs; at its probe's end it is
    # fine-tuned only if its probe ranks in this best fraction of the probes recorded so far,
    # and otherwise ends PRUNED with its probe's result (docs/features.md). None: all go on.
    fine_tune_best: float | None = None
    # Probes recorded before any trial is fine-tuned (None: enough for the best fraction to
    # hold one, ceil(1 / fine_tune_best)).
    min_probes: int | None = None
    # The command line starts a fresh process (and resumes) after this many trials. Each
    # trial's memory is released after it (search.memory), so None (never) is the default;
    # a number bounds what a leak outside the search's reach (custom code, a GPU allocator
    # fragmenting across very different models, TensorFlow's oneDNN kernel caches on CPU)
    # can add up to.
    trials_per_process: int | None = None
    # Second objective for a multi-objective (Pareto) search: one of search.metrics.COSTS.
    minimize: str | None = None
    # Extra keyword arguments for the algorithm (e.g. hyperband's factor, a sampler's options).
    # Optuna algorithms also take the settings of search.core.options.OptunaOptions: 'pruner'
    # (median, the default; hyperband; successive_halving; none), 'pruner_options', 'storage',
    # 'study', 'heartbeat_interval' and 'grace_period'. An unknown key is an error naming it.
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Stop the search after this long ("2h", "90m", seconds): see search.engine.budget.
    time_budget: str | float | None = None
    # Write each trial's TensorBoard logs, with the HParams dashboard's summaries.
    tensorboard: bool = False
    # k-fold cross-validation for small datasets: each trial trains k times, on k-1 folds of
    # train+val and validated on the other (stratified, drawn from `seed`, the same folds for
    # every trial); it scores the mean over folds, and the ensemble chooses on out-of-fold
    # predictions. None: one train/val split.
    folds: int | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise SpaceError(
                f"Search(algorithm={self.algorithm!r}) is not an algorithm."
                f"{did_you_mean(self.algorithm, ALGORITHMS)} Use one of {', '.join(ALGORITHMS)}."
            )
        for name in ("max_trials", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpaceError(f"Search({name}={value!r}) must be a whole number >= 1.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise SpaceError(f"Search(seed={self.seed!r}) must be a whole number from 0 to {MAX_SEED}.")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise SpaceError(f"Search(early_stopping={self.early_stopping!r}) must be >= 1 or None.")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise SpaceError(f"Search(steps_per_epoch={self.steps_per_epoch!r}) must be >= 1 or None.")
        if self.trials_per_process is not None and (
            not isinstance(self.trials_per_process, int) or self.trials_per_process < 1
        ):
            raise SpaceError(f"Search(trials_per_process={self.trials_per_process!r}) must be >= 1 or None.")
        if self.keep_models not in ("all", "best"):
            raise SpaceError(f"Search(keep_models={self.keep_models!r}) must be 'all' or 'best'.")
        if self.keep_models == "best" and self.algorithm == "hyperband":
            raise SpaceError("Search(keep_models='best') does not combine with algorithm='hyperband', whose later "
                             "rounds go on from earlier trials' models: use keep_models='all'.")
        metrics.check_objective(self.objective)
        metrics.check_cost(self.minimize)
        durations.parse(self.time_budget)
        if not isinstance(self.options, dict):
            raise SpaceError(f"Search(options={self.options!r}) must be a dict, e.g. options={{'factor': 3}}.")
        if uses_optuna(self.algorithm):
            optuna_options(self.options)  # its settings and pruner; the sampler's arguments when it is built
        if isinstance(self.cached_views, bool) or not isinstance(self.cached_views, int) or self.cached_views < 1:
            raise SpaceError(f"Search(cached_views={self.cached_views!r}) must be a whole number >= 1, e.g. 4.")
        if isinstance(self.feature_cache_gb, bool) or not isinstance(self.feature_cache_gb, (int, float)) \
                or not self.feature_cache_gb > 0:
            raise SpaceError(f"Search(feature_cache_gb={self.feature_cache_gb!r}) must be a number of GB > 0, e.g. 20.")
        if self.folds is not None and (isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2):
            raise SpaceError(f"Search(folds={self.folds!r}) must be a whole number >= 2 (5 is usual), or None for one "
                             "train/val split.")
        if self.folds is not None and self.algorithm == "hyperband":
            raise SpaceError(f"Search(folds={self.folds}) does not combine with algorithm='hyperband', whose later "
                             "rounds continue one model's weights; use random, bayesian or an Optuna algorithm.")
        self._check_fine_tune_best()
        if not isinstance(self.tensorboard, bool):
            raise SpaceError(f"Search(tensorboard={self.tensorboard!r}) must be True or False.")

    def _check_fine_tune_best(self) -> None:
        fraction = self.fine_tune_best
        if fraction is None:
            if self.min_probes is not None:
                raise SpaceError(f"Search(min_probes={self.min_probes!r}) applies with fine_tune_best only; "
                                 "set fine_tune_best too, e.g. fine_tune_best=0.25, or drop min_probes.")
            return
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise SpaceError(f"Search(fine_tune_best={fraction!r}) must be a fraction in (0, 1], e.g. 0.25 "
                             "(the best quarter of the probes is fine-tuned).")
        if self.min_probes is not None and (isinstance(self.min_probes, bool) or not isinstance(self.min_probes, int)
                                            or self.min_probes < 1):
            raise SpaceError(f"Search(min_probes={self.min_probes!r}) must be a whole number >= 1, or None.")
        if self.probes_before_fine_tuning > self.max_trials:
            raise SpaceError(
                f"Search(fine_tune_best={fraction!r}) fine-tunes nothing before {self.probes_before_fine_tuning} "
                f"probes, and max_trials is {self.max_trials}: raise max_trials or lower min_probes.")
        if self.algorithm == "hyperband":
            raise SpaceError("Search(fine_tune_best=...) is successive halving of its own; hyperband sets each "
                             "trial's epochs itself: use another algorithm (random, bayesian, tpe, ...).")
        if self.folds is not None:
            raise SpaceError(f"Search(fine_tune_best=...) does not combine with folds={self.folds}: a probe is "
                             "ranked on one validation split; drop one of the two.")
        if self.minimize is not None:
            raise SpaceError(f"Search(fine_tune_best=...) ranks probes on the objective alone; it does not take "
                             f"a second objective (minimize={self.minimize!r}): drop one of the two.")

    @property
    def probes_before_fine_tuning(self) -> int:
        """How many probes must be recorded before `fine_tune_best` fine-tunes any trial."""
        if self.min_probes is not None:
            return int(self.min_probes)
        return max(1, math.ceil(1 / float(self.fine_tune_best or 1) - 1e-9))
