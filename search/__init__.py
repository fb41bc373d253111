"""Search spaces of transfer-learning image classifiers.

A space file needs one import line::

    from search import Data, Search

A notebook runs one with the Python API (`search.api`)::

    result = search.run_space("spaces/digits.py", max_trials=4)
"""

import os as _os

# Before TensorFlow loads (every `python -m search.*` command imports this first): keep its
# C++ info lines (CPU features and the like) off the console. A user's own value wins.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from typing import Any as _Any  # noqa: E402

from search.declare import Data, Search  # noqa: E402
from search.errors import SearchError  # noqa: E402

_API = ("run_space", "open_results", "promote", "Result")
__all__ = ["Data", "Search", "SearchError", *_API]


def __getattr__(name: str) -> _Any:
    # The API on first use: a command or a space file that never calls it does not import pandas.
    if name in _API:
        from search import api

        return getattr(api, name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
