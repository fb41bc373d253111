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
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
# Work shorter than this shows nothing: a bar that flashes by is noise.
QUIET_SECONDS = 2.0


def _terminal() -> bool:
    return sys.stderr.isatty()


def progress(
    items: Iterable[T],
    what: str,
    *,
    total: int | None = None,
    unit: str = "item",
    size: Callable[[T], int] | None = None,
) -> Iterator[T]:
    """Yield `items`, showing how far through them the work is.

    `size(item)` is how many units an item counts for (a batch of records, say); each counts
    one by default. `total` is in those units."""
    if total is None and size is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if _terminal():
        from tqdm import tqdm

        with tqdm(desc=what, total=total, unit=unit, delay=QUIET_SECONDS, leave=False, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for item in items:
                yield item
                bar.update(1 if size is None else size(item))
        return
    started = time.monotonic()
    units = unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")
    said_start = False
    next_quarter = 1
    done = 0
    for item in items:
        yield item
        done += 1 if size is None else size(item)
        elapsed = time.monotonic() - started
        if not said_start and elapsed > QUIET_SECONDS:
            print(f"{what}: {done}{f' of {total}' if total else ''} {units} ...", file=sys.stderr, flush=True)
            said_start = True
        elif said_start and total and done >= next_quarter * total / 4 and next_quarter < 4:
            print(f"{what}: {done} of {total} {units} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
        if total:  # the quarters already passed (in one burst, or before the start line) are not said again
            next_quarter = max(next_quarter, int(4 * done // total) + 1)
    if said_start:
        print(f"{what}: {done} {units} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


# What libjpeg prints on stderr for a broken JPEG while it decodes it, one line each (its
# error and warning texts, jerror.h of libjpeg-turbo, that corrupt or truncated data can
# raise; the image check then names the file with TensorFlow's own reason). %d, %u, %x and
# %c stand for the numbers and letters libjpeg fills in.
LIBJPEG_MESSAGES = (
    "Bogus Huffman table definition", "Bogus marker length", "Bogus JPEG colorspace", "Bogus sampling factors",
    "Bogus DAC index %d", "Bogus DAC value 0x%x", "Bogus DHT index %d", "Bogus DQT index %d",
    "Invalid component ID %d in SOS", "DCT coefficient out of range", "Unsupported JPEG data precision %d",
    "Invalid progressive parameters Ss=%d Se=%d Ah=%d Al=%d", "Improper call to JPEG library in state %d",
    "Empty JPEG image (DNL not supported)", "Didn't expect more than one scan", "Input file read error",
    "Huffman code size table overflow", "Missing Huffman code table entry",
    "Maximum supported image dimension is %u pixels", "Empty input file", "Premature end of input file",
    "JPEG datastream contains no image", "Huffman table 0x%x was not defined", "Arithmetic table 0x%x was not defined",
    "Quantization table 0x%x was not defined", "Not a JPEG file: starts with 0x%x 0x%x",
    "Invalid JPEG file structure: two SOF markers", "Invalid JPEG file structure: missing SOS marker",
    "Invalid JPEG file structure: two SOI markers", "Invalid JPEG file structure: SOS before SOF",
    "Unsupported JPEG process: SOF type 0x%x", "Unsupported marker type 0x%x", "Too many color components: %d, max %d",
    "Image too wide for this implementation", "Unsupported color conversion request",
    "Sorry, arithmetic coding is not implemented", "Sampling factors too large for interleaved scan",
    "Component index %d: mismatching sampling ratio %d:%d, %d:%d, %c",
    "Unknown Adobe color transform code %d", "Corrupt JPEG data: bad arithmetic code",
    "Inconsistent progression sequence for component %d coefficient %d",
    "Corrupt JPEG data: %u extraneous bytes before marker 0x%x", "Corrupt JPEG data: premature end of data segment",
    "Corrupt JPEG data: bad Huffman code", "Warning: unknown JFIF revision number %d.%d", "Premature end of JPEG file",
    "Corrupt JPEG data: found marker 0x%x instead of RST%d", "Invalid SOS parameters for sequential JPEG",
    "Application transferred too many scanlines",
)


def _message_pattern(message: str) -> str:
    """A libjpeg message as an anchored regex: the whole line, its numbers and letters free."""
    fields = {"%d": r"-?\d+", "%u": r"\d+", "%x": r"[0-9a-fA-F]+", "%c": r"\S"}
    parts = re.split(r"(%[duxc])", message)
    return "^" + "".join(fields.get(part) or re.escape(part) for part in parts) + "$"


# Lines that native libraries print straight to the process's stderr, which say nothing to a
# user: TensorFlow's logging set-up and CPU notes at import (TF_CPP_MIN_LOG_LEVEL does not
# reach them), libjpeg's complaints about each broken file, and TensorFlow's JPEG decoder's
# own error line about one ("E0000 00:00:... jpeg_mem.cc:331] Premature end of JPEG data.
# Stopped at line 14/64"), all of which the image check then names properly.
NATIVE_NOISE = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"^I0000 .*\] oneDNN custom operations are on",
    r"cpu_feature_guard\.cc",
    r"^To enable the following instructions: .* rebuild TensorFlow",
    r"^[EW]\d{4} [\d:.]+\s+\d+ jpeg_(?:mem|handle)\.cc:\d+\] ",
    *(_message_pattern(m) for m in LIBJPEG_MESSAGES),
))


def filter_native_stderr() -> None:
    """Drop `NATIVE_NOISE` from everything written to file descriptor 2 from now on, for the
    command line only (it swaps the process's stderr for a pipe); every other line passes
    through at once, and what is left in the pipe is flushed when the process exits."""
    if os.environ.get("SEARCH_RAW_STDERR"):
        return
    # Pillow's Python warnings about a damaged file it reads for the image check ("Corrupt
    # EXIF data"): the check names the file and its reason itself.
    warnings.filterwarnings("ignore", module=r"PIL\.")
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
