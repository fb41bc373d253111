"""A space's `hyperparameters(hp)` read without Keras Tuner, so its mistakes answer in a second.

`search.preflight` runs the space's function on a `Declared`, which takes the calls of Keras
Tuner's `HyperParameters` that spaces make (`Int`, `Float`, `Choice`, `Boolean`, `Fixed`,
`get`, `conditional_scope`) and refuses what Keras Tuner would refuse (an empty choice, a
range whose minimum exceeds its maximum, log sampling of a range that reaches zero). Then
every value a built-in hyperparameter can take is checked as a trial would check it. Keras
Tuner itself, once loaded, stays the authority (`search.space`): a call this stand-in does not
know is left to it, never refused here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from search import hparams
from search.errors import SearchError, SpaceError, did_you_mean
from search.spacefile import line_in

SAMPLINGS = ("linear", "log", "reverse_log")
# The rest of Keras Tuner's HyperParameters: a space that uses them is checked by Keras Tuner.
KERAS_TUNER_ONLY = frozenset({"active_scopes", "copy", "ensure_active_values", "from_config", "from_proto",
                              "get_config", "inactive_scopes", "is_active", "merge", "name_scope", "space", "to_proto"})


class Unknown(Exception):
    """The space uses a part of Keras Tuner's API this stand-in does not take: Keras Tuner checks it."""


class Declared:
    """What a space's `hyperparameters(hp)` declares: each name and the values it can take."""

    def __init__(self) -> None:
        self.candidates: dict[str, list[Any]] = {}
        self.values: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in KERAS_TUNER_ONLY:
            raise Unknown(name)
        known = [n for n in dir(type(self)) if not n.startswith("_")] + sorted(KERAS_TUNER_ONLY)
        raise AttributeError(f"'HyperParameters' object has no attribute {name!r}.{did_you_mean(name, known)}")

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def _declare(self, name: str, candidates: list[Any], value: Any) -> Any:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a hyperparameter's name must be a non-empty string, got {name!r}")
        self.candidates.setdefault(name, []).extend(candidates)
        return self.values.setdefault(name, value)

    def _range(self, kind: str, name: str, low: Any, high: Any, sampling: str | None) -> None:
        if sampling not in (None, *SAMPLINGS):
            raise ValueError(f"For HyperParameters.{kind}(name={name!r}), sampling must be one of {set(SAMPLINGS)}")
        if low > high:
            raise ValueError(f"For HyperParameters.{kind}(name={name!r}), min_value {low} is greater than "
                             f"the max_value {high}.")
        if sampling in ("log", "reverse_log") and low <= 0:
            raise ValueError(f"For HyperParameters.{kind}(name={name!r}), sampling={sampling!r} does not support "
                             f"negative values, found min_value: {low}.")

    def Int(self, name: str, min_value: int, max_value: int, step: int | None = None,  # noqa: N802 - Keras Tuner's name
            sampling: str = "linear", default: int | None = None, **scope: Any) -> Any:
        self._range("Int", name, min_value, max_value, sampling)
        return self._declare(name, [min_value, max_value], min_value if default is None else default)

    def Float(self, name: str, min_value: float, max_value: float, step: float | None = None,  # noqa: N802
              sampling: str = "linear", default: float | None = None, **scope: Any) -> Any:
        self._range("Float", name, min_value, max_value, sampling)
        return self._declare(name, [min_value, max_value], min_value if default is None else default)

    def Choice(self, name: str, values: Sequence[Any], ordered: bool | None = None,  # noqa: N802
               default: Any = None, **scope: Any) -> Any:
        if not values:
            raise ValueError("`values` must be provided for `Choice`.")
        return self._declare(name, list(values), values[0] if default is None else default)

    def Boolean(self, name: str, default: bool = False, **scope: Any) -> Any:  # noqa: N802
        return self._declare(name, [True, False], default)

    def Fixed(self, name: str, value: Any, **scope: Any) -> Any:  # noqa: N802
        return self._declare(name, [value], value)

    def get(self, name: str) -> Any:
        if name not in self.values:
            raise KeyError(f"{name} does not exist.")
        return self.values[name]

    @contextlib.contextmanager
    def conditional_scope(self, parent_name: str, parent_values: Any) -> Iterator[None]:
        yield


def check(path: Path, declare: Any, *, own_model: bool, skip: Iterable[str] = ()) -> None:
    """SpaceError for a mistake in the space file `path`'s `hyperparameters` function `declare`,
    or in a value it can give a built-in hyperparameter. Names in `skip` are fixed by the
    command line; a space with its own `build_model` gives meaning to names of its own."""
    declared = Declared()
    try:
        declare(declared)
    except Unknown:
        return
    except (SearchError, ValueError) as e:  # a ValueError says what Keras Tuner would say
        raise SpaceError(f"{path}, line {line_in(path, e)}: {e}") from None
    except Exception as e:  # noqa: BLE001 - anything the user's function raises is theirs
        raise SpaceError(f"{path}, line {line_in(path, e)}: {type(e).__name__}: {e}") from None
    skipped = set(skip)
    for name, candidates in declared.candidates.items():
        if name in skipped:
            continue
        try:
            hparams.check_declared(name, candidates, own_model=own_model)
        except SpaceError as e:
            raise SpaceError(f"{path}: {e}") from None
