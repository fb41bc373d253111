"""How long work shows its progress: a bar on a terminal, a few plain lines otherwise.

Unzipping, checking every image, counting TFRecords, predicting and exporting can take
minutes on real data. On a terminal `progress` draws a tqdm bar on stderr; when the output
goes to a file or a CI log it prints a start line, a line at each further quarter and an
end line, so logs stay short and still say what the process is doing.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
# Work shorter than this shows nothing: a bar that flashes by is noise.
QUIET_SECONDS = 2.0


def _terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable[T], what: str, *, total: int | None = None, unit: str = "item") -> Iterator[T]:
    """Yield `items`, showing how far through them the work is."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if _terminal():
        from tqdm import tqdm

        yield from tqdm(items, desc=what, total=total, unit=unit, delay=QUIET_SECONDS, leave=False,
                        file=sys.stderr, dynamic_ncols=True)
        return
    started = time.monotonic()
    said_start = False
    next_quarter = 1
    done = 0
    for item in items:
        yield item
        done += 1
        elapsed = time.monotonic() - started
        if not said_start and elapsed > QUIET_SECONDS:
            print(f"{what}: {done}{f' of {total}' if total else ''} {unit}s ...", file=sys.stderr, flush=True)
            said_start = True
        if said_start and total and done >= next_quarter * total / 4 and next_quarter < 4:
            print(f"{what}: {done} of {total} {unit}s ({elapsed:.0f} s)", file=sys.stderr, flush=True)
            next_quarter += 1
    if said_start:
        print(f"{what}: {done} {unit}s in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


# Lines that native libraries print straight to the process's stderr, which say nothing to a
# user: TensorFlow's logging set-up and CPU notes at import (TF_CPP_MIN_LOG_LEVEL does not
# reach them), and libjpeg's complaint about each corrupt file that the image check then
# names properly.
NATIVE_NOISE = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"^I0000 .*\] oneDNN custom operations are on",
    r"cpu_feature_guard\.cc",
    r"^To enable the following instructions: .* rebuild TensorFlow",
    r"^(Corrupt JPEG data|Premature end of JPEG file|Input file read error|Invalid JPEG file structure)",
))


def filter_native_stderr() -> None:
    """Drop `NATIVE_NOISE` from everything written to file descriptor 2 from now on, for the
    command line only (it swaps the process's stderr for a pipe); every other line passes
    through at once, and what is left in the pipe is flushed when the process exits."""
    if os.environ.get("SEARCH_RAW_STDERR"):
        return
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def forward() -> None:
        with os.fdopen(read, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not any(p.search(line.decode("utf-8", "replace")) for p in NATIVE_NOISE):
                        os.write(real, line + b"\n")
            if pending:
                os.write(real, pending)

    thread = threading.Thread(target=forward, daemon=True, name="stderr-filter")
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last writer in this process: the thread sees the end
        thread.join(timeout=5)

    atexit.register(restore)
