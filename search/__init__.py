"""Search spaces of transfer-learning image classifiers.

A space file needs one import line::

    from search import Data, Search
"""

from search.declare import Data, Search

__all__ = ["Data", "Search"]
