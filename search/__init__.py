"""Search spaces of transfer-learning image classifiers.

A space file needs one import line::

    from search import Data, Search
"""

import os as _os

# Before TensorFlow loads (every `python -m search.*` command imports this first): keep its
# C++ info lines (CPU features and the like) off the console. A user's own value wins.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from search.declare import Data, Search  # noqa: E402

__all__ = ["Data", "Search"]
