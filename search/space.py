"""Load a space file, apply command-line overrides, and validate it before anything runs.

A space file is plain Python with three names (see `search.declare`): ``data``, ``search``
and ``hyperparameters(hp)``, and two optional ones: ``build_model(hp, inputs, num_classes)``,
a model of the user's own in place of a backbone and head, and ``callbacks(hp)``, Keras
callbacks for each trial's fit. Everything a user can get wrong in it is reported here as one
`SpaceError` naming the file, the line or the name, and the fix; nothing is written to disk.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras_tuner as kt

from search import hparams
from search.core.values import lossless
from search.declare import Data, Search
from search.errors import SearchError, SpaceError, did_you_mean
from search.models.backbones import BACKBONES
from search.spacefile import line_in, run_file

# fine_tune_best off: two 1-epoch trials are probes only, with no fine-tuning to rank them for.
SMOKE_SEARCH = {"max_trials": 2, "epochs": 1, "steps_per_epoch": 3, "early_stopping": None, "fine_tune_best": None,
                "min_probes": None}
SMOKE_IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Space:
    """A loaded, validated space file with the command line's overrides applied."""

    name: str
    path: Path
    data: Data
    search: Search
    declare_fn: Callable[[Any], Any]
    fixed: Mapping[str, Any]  # hyperparameters fixed by --set / --smoke
    doc: str = ""
    # build_model(hp, inputs, num_classes) -> a keras.Model or its output tensor (probabilities)
    build_fn: Callable[..., Any] | None = None
    # callbacks(hp) -> Keras callbacks added to each trial's fit
    callbacks_fn: Callable[[Any], Any] | None = None

    def declare(self, hp: kt.HyperParameters) -> None:
        """Declare the space's hyperparameters on `hp`, with the fixed ones pinned."""
        self.declare_fn(_Pinned(hp, self.fixed))
        for name, value in self.fixed.items():
            if name not in hp:
                hp.Fixed(name, value)

    def trial_config(self, values: Mapping[str, Any]) -> hparams.TrialConfig:
        return hparams.TrialConfig.from_values(values)

    def hyperparameters_with(self, values: Mapping[str, Any]) -> kt.HyperParameters:
        """The space's hyperparameters holding one trial's values (what build_model gets)."""
        hp = kt.HyperParameters()
        self.declare(hp)
        hp.values.update(values)
        return hp

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


class _Pinned:
    """An `hp` whose fixed names answer with their pinned value, whatever the space asked."""

    def __init__(self, hp: kt.HyperParameters, fixed: Mapping[str, Any]):
        self._hp = hp
        self._fixed = fixed

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self._hp, attr)
        if attr not in ("Choice", "Int", "Float", "Boolean", "Fixed"):
            return method

        def declare(name: str, *args: Any, **kwargs: Any) -> Any:
            if name in self._fixed:
                conditions = {k: kwargs[k] for k in ("parent_name", "parent_values") if k in kwargs}
                return self._hp.Fixed(name, self._fixed[name], **conditions)
            return method(name, *args, **kwargs)

        return declare


def parse_value(text: str) -> Any:
    """`--set` values: Python literals (64, 0.2, True, [1, 2]) or else plain strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_space(
    path: str | Path,
    *,
    sets: Mapping[str, str] | None = None,
    data_path: str | None = None,
    max_trials: int | None = None,
    epochs: int | None = None,
    algorithm: str | None = None,
    seed: int | None = None,
    smoke: bool = False,
) -> Space:
    """Import and validate a space file; raise SpaceError with the file and line on any problem."""
    path = Path(path)
    module = run_file(path, "_search_space_")
    data, search, declare_fn = _required_names(path, module)

    fixed: dict[str, Any] = {}
    search_changes: dict[str, Any] = {}
    data_changes: dict[str, Any] = {}
    if smoke:
        search_changes.update(SMOKE_SEARCH)
        fixed["weights"] = "none"
    own = _own_hyperparameters(module, declare_fn) if hasattr(module, "build_model") else {}
    for name, text in (sets or {}).items():
        value = parse_value(text)
        if name in own:
            fixed[name] = _coerce_own(path, own[name], value)
        elif name in hparams.NAMES:
            fixed[name] = hparams.coerce(name, value)
        elif name in _fields(Search):
            search_changes[name] = _coerce_setting(Search, name, value)
        elif name in _fields(Data):
            data_changes[name] = _coerce_setting(Data, name, value)
        else:
            every = [*hparams.NAMES, *_fields(Search), *_fields(Data)]
            raise SpaceError(
                f"--set {name}=...: {name!r} is neither a hyperparameter nor a Search/Data setting."
                f"{did_you_mean(name, every)}"
            )
    for option, value in (("max_trials", max_trials), ("epochs", epochs), ("algorithm", algorithm), ("seed", seed)):
        if value is not None:
            search_changes[option] = value
    if data_path is not None:
        data_changes["path"] = data_path

    try:
        search = dataclasses.replace(search, **search_changes)
        data = dataclasses.replace(data, **data_changes)
    except (SearchError, TypeError) as e:
        raise SpaceError(f"{path}: {e}") from None

    space = Space(
        name=str(getattr(module, "name", path.stem)),
        path=path,
        data=data,
        search=search,
        declare_fn=declare_fn,
        fixed=fixed,
        doc=(module.__doc__ or "").strip(),
        build_fn=_optional_function(path, module, "build_model", ("hp", "inputs", "num_classes")),
        callbacks_fn=_optional_function(path, module, "callbacks", ("hp",)),
    )
    if smoke and "image_size" not in fixed:
        fixed["image_size"] = _smoke_image_size(space)
    _validate_hyperparameters(space)
    check_fine_tune_best(space)
    if space.data.tfrecord_size is None:
        # Which of Kaggle's TFRecord sizes to read: the largest the trials can ask for, so
        # none is upscaled from a smaller copy (the data is opened once, before any trial).
        space = dataclasses.replace(space, data=dataclasses.replace(space.data, tfrecord_size=largest_image_size(space)))
    return space


def largest_image_size(space: Space) -> int:
    """The largest image_size any trial of the space can take (with --set/--smoke applied)."""
    # Every declaration counts: a space may fix a different size under each backbone.
    sizes = [v for param in _declared(space).space if param.name == "image_size" for v in _values(param)]
    return int(max(sizes)) if sizes else int(hparams.DEFAULTS["image_size"])


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _coerce_setting(cls: type, name: str, value: Any) -> Any:
    """A --set value for a Search/Data setting as the setting's type takes it (3.0 -> 3)."""
    kinds = typing.get_args(typing.get_type_hints(cls)[name]) or (typing.get_type_hints(cls)[name],)
    return lossless(value, kinds)


def _required_names(path: Path, module: Any) -> tuple[Data, Search, Callable[[Any], Any]]:
    def misnamed(kind: type, wanted: str) -> str:
        for name, value in vars(module).items():
            if isinstance(value, kind) and name != wanted:
                return f" It defines a {kind.__name__}(...) named {name!r}: rename it to {wanted!r}."
        return ""

    data = getattr(module, "data", None)
    if not isinstance(data, Data):
        raise SpaceError(
            f"{path}: needs `data = Data(...)` saying where the images are.{misnamed(Data, 'data')}"
        )
    search = getattr(module, "search", None)
    if search is None:
        hint = misnamed(Search, "search")
        if hint:
            raise SpaceError(f"{path}: no `search = Search(...)`.{hint}")
        search = Search()
    elif not isinstance(search, Search):
        raise SpaceError(f"{path}: `search` must be a Search(...), got {type(search).__name__}.")
    declare = getattr(module, "hyperparameters", None)
    if not callable(declare):
        functions = [n for n, v in vars(module).items() if callable(v) and not isinstance(v, type)]
        raise SpaceError(
            f"{path}: needs a function `def hyperparameters(hp):` declaring the search space."
            f"{did_you_mean('hyperparameters', functions)}"
        )
    return data, search, declare


def _own_hyperparameters(module: Any, declare_fn: Callable[[Any], Any]) -> dict[str, Any]:
    """The hyperparameters a space with its own build_model declares beyond the built-in ones."""
    hp = kt.HyperParameters()
    try:
        declare_fn(hp)
    except Exception:  # noqa: BLE001 - reported with its line by the validation that follows
        return {}
    return {p.name: p for p in hp.space if p.name not in hparams.NAMES}


def _coerce_own(path: Path, declared: Any, value: Any) -> Any:
    """A --set value for a hyperparameter of the space's own, as the type it was declared with."""
    kinds = kt.engine.hyperparameters
    problem = None
    if isinstance(declared, kinds.Boolean):
        problem = None if isinstance(value, bool) else "True or False"
    elif isinstance(declared, kinds.Int):
        value = lossless(value, (int,))
        problem = None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    elif isinstance(declared, kinds.Float):
        value = lossless(value, (float,))
        problem = None if isinstance(value, float) else "a number"
    elif isinstance(declared, kinds.Choice) and declared.values:
        wanted = type(declared.values[0])
        value = lossless(value, (wanted,))
        problem = None if isinstance(value, wanted) and not (wanted is not bool and isinstance(value, bool)) \
            else f"a {wanted.__name__} like its choices {list(declared.values)}"
    if problem:
        raise SpaceError(f"{path}: --set {declared.name}={value!r}: {declared.name} is declared as "
                         f"{type(declared).__name__}, so it takes {problem}.")
    return value


def _optional_function(path: Path, module: Any, name: str, parameters: tuple[str, ...]) -> Callable[..., Any] | None:
    function = getattr(module, name, None)
    if function is None:
        return None
    if not callable(function):
        raise SpaceError(f"{path}: `{name}` must be a function `def {name}({', '.join(parameters)}):`, "
                         f"got {type(function).__name__}.")
    try:
        inspect.signature(function).bind(*parameters)
    except TypeError:
        raise SpaceError(f"{path}: `{name}` must take ({', '.join(parameters)}): define it as "
                         f"`def {name}({', '.join(parameters)}):`.") from None
    return function


def _declared(space: Space) -> kt.HyperParameters:
    hp = kt.HyperParameters()
    try:
        space.declare(hp)
    except SearchError as e:
        raise SpaceError(f"{space.path}, line {line_in(space.path, e)}: {e}") from None
    except Exception as e:  # noqa: BLE001 - Keras Tuner's ValueErrors (bad ranges) are the user's
        raise SpaceError(f"{space.path}, line {line_in(space.path, e)}: {e}") from None
    return hp


def candidate_values(hp: kt.HyperParameters, name: str) -> list[Any]:
    """Every value a hyperparameter can take, or its bounds for a numeric range."""
    for param in hp.space:
        if param.name == name:
            return _values(param)
    return []


def _values(param: Any) -> list[Any]:
    if isinstance(param, kt.engine.hyperparameters.Choice):
        return list(param.values)
    if isinstance(param, kt.engine.hyperparameters.Fixed):
        return [param.value]
    if isinstance(param, kt.engine.hyperparameters.Boolean):
        return [True, False]
    return [param.min_value, param.max_value]


def _validate_hyperparameters(space: Space) -> None:
    hp = _declared(space)
    for param in hp.space:
        try:
            hparams.check_declared(param.name, candidate_values(hp, param.name), own_model=space.build_fn is not None)
        except SpaceError as e:
            pinned = " (fixed by --set)" if param.name in space.fixed else ""
            raise SpaceError(f"{space.path}: {e}{pinned}") from None


def check_fine_tune_best(space: Space) -> None:
    """Search(fine_tune_best) ranks every trial on its probe: each must be probe_then_all on a
    backbone the search builds (and can cache), with epochs left after the probe."""
    search = space.search
    if search.fine_tune_best is None:
        return
    setting = f"{space.path}: Search(fine_tune_best={search.fine_tune_best!r})"
    if space.build_fn is not None:
        raise SpaceError(f"{setting} ranks trials on a probe of a cached backbone, and this space builds its own "
                         "model (build_model): drop fine_tune_best, or declare a backbone instead of build_model.")
    hp = _declared(space)
    def every(name: str) -> list[Any]:  # a space may declare a name under each backbone
        return [v for param in hp.space if param.name == name for v in _values(param)] or [hparams.DEFAULTS[name]]

    modes = sorted(set(every("fine_tune")))
    if modes != ["probe_then_all"]:
        found = ", ".join(map(repr, modes))
        raise SpaceError(f"{setting} needs every trial to probe then fine-tune, and fine_tune takes {found}: "
                         "declare hp.Fixed(\"fine_tune\", \"probe_then_all\").")
    probes = every("probe_epochs")
    if max(probes) >= search.epochs:
        raise SpaceError(f"{setting}: probe_epochs can be {max(probes)}, and epochs is {search.epochs}, so no epoch "
                         "is left to fine-tune: lower probe_epochs or raise epochs.")


def _smoke_image_size(space: Space) -> int:
    """The smallest size every backbone the space can pick accepts."""
    hp = _declared(space)
    backbones = candidate_values(hp, "backbone") or [hparams.DEFAULTS["backbone"]]
    sizes = [BACKBONES[b].min_size for b in backbones if b in BACKBONES]
    return max([SMOKE_IMAGE_SIZE, *sizes])


def print_space(space: Space, file: Any = sys.stdout) -> None:
    """The space as a table: name, candidate values, and what the command line fixed."""
    hp = _declared(space)
    width = max([len(p.name) for p in hp.space] or [0])
    for param in hp.space:
        values = candidate_values(hp, param.name)
        kind = type(param).__name__
        shown = f"{values[0]} .. {values[1]}" if kind in ("Int", "Float") else ", ".join(map(str, values))
        print(f"  {param.name:<{width}}  {kind:<7} {shown}", file=file)
