"""Ctrl-C and SIGTERM stop a search, even where Python loses the KeyboardInterrupt.

Python raises KeyboardInterrupt wherever the main thread is when the signal comes. Inside a
finaliser it is printed as "Exception ignored" and dropped; inside a C extension that calls
back into Python (TensorFlow's `nest` does) it comes out as a SystemError that the library
may catch. Either way the search would go on as if no signal had come: a worker its
launcher told to stop would go on alone until killed. So each signal is also remembered,
and `check` raises it again where a search can stop: a trial's start, each epoch's end and
each wait for other workers.

Inside a trial the first signal does not raise at all (`deferred`): TensorFlow code runs
almost all the time there, and a KeyboardInterrupt landing inside it can print its own
traceback before Python sees it. The trial stops at the next batch's end instead (`check`
from a callback), a second signal stops it at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from collections.abc import Callable
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []
_deferring: list[bool] = []
_NOTICE = b"\nStopping at the end of this batch (again to stop at once).\n"


def _on_signal(signum: int, frame: Any) -> None:
    first = not _received
    _received.append(signum)
    if first and _deferring:
        if not os.environ.get(WORKER_ENV):  # a launcher's workers: the launcher says it once for all
            os.write(2, _NOTICE)
        return
    raise KeyboardInterrupt(f"signal {signum}")


# Set by the launcher in its workers' environment.
WORKER_ENV = "SEARCH_WORKER"


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within, a first signal is only remembered: `check` raises it where it is safe."""
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()


def install() -> Callable[[], None]:
    """Handle SIGINT and SIGTERM as above until the returned function is called. A signal
    this process was started ignoring (a `nohup` or background job) stays ignored."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        return _received.clear  # only the main thread can handle signals
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, _on_signal)

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()  # handled: `check` outside a search (a refit, a test after it) raises nothing

    return restore


def received() -> bool:
    """Whether a signal came since `install`, whether or not its KeyboardInterrupt got through."""
    return bool(_received)


def check() -> None:
    """Raise KeyboardInterrupt if a signal came since `install`."""
    if _received:
        raise KeyboardInterrupt(f"signal {_received[0]}")
