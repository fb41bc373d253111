"""Give back the memory of a finished trial, so that a long search stays flat in one process.

Three things keep a trial's memory after its model is gone:

- Keras' global state (layer names, the default graph): `keras.backend.clear_session()`.
- TensorFlow's gradient registry. Each time a train step is traced, Keras' optimizer goes
  through `ReplicaContext.all_reduce`, a `tf.custom_gradient`, which registers its gradient
  function in TensorFlow's global registry under a fresh name and never removes it
  (tensorflow/tensorflow#97697, #27492). That function's closure holds tensors of the traced
  graph, so the whole training graph of the trial (150-200 MB for a MobileNetV2) stays
  alive until the process ends, whatever `clear_session` and `gc` do. The entries are only
  read while a gradient is being traced; once the trial is over, its entries are dead, and
  `TrialMemory.release` drops the ones registered since `TrialMemory.begin`.
- The C heap. glibc keeps freed pages in its arenas, so resident memory saws up and down by
  ~200 MB from trial to trial; `malloc_trim(0)` returns them to the system.

What is left to grow on CPU is TensorFlow's oneDNN kernel caches (per thread, bounded,
with no way to empty them from outside), which fill as new layer shapes appear; a fresh
process (`Search(trials_per_process=N)`) starts with empty ones. bench/memory.py measures
both (figures in bench/README.md).
"""

from __future__ import annotations

import ctypes
import logging

import keras

from search.compat import CUSTOM_GRADIENT_PREFIX, gradient_registry

log = logging.getLogger(__name__)


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; absent on macOS and musl
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


class TrialMemory:
    """Marks what TensorFlow holds when a trial begins and frees what the trial added.

        memory = TrialMemory()  # or memory.begin(), before the trial builds its model
        ...                 # build, trace, fit, save; drop every reference to the model
        memory.release()    # after the trial, once nothing traces any more
    """

    def __init__(self) -> None:
        self._before: set[str] = set()
        self.begin()

    def begin(self) -> None:
        """Marks the registry as it is now: `release` keeps every entry already in it."""
        self._before = set(gradient_registry() or ())

    def release(self) -> int:
        """Drops the trial's custom gradients, clears Keras' session (one full `gc`) and trims
        the C heap. Returns how many registry entries were dropped."""
        table = gradient_registry()
        dropped = 0
        if table is not None:
            for name in [n for n in table if n.startswith(CUSTOM_GRADIENT_PREFIX) and n not in self._before]:
                del table[name]
                dropped += 1
        keras.backend.clear_session()  # also runs gc.collect(), which now frees the graphs
        if _TRIM is not None:
            _TRIM(0)
        self._before = set(table or ())
        return dropped
