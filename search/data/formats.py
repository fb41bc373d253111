"""Image formats: what a file's header says, and the formats TensorFlow cannot decode.

TensorFlow's `decode_image` reads JPEG, PNG, GIF, BMP and WebP. Pillow reads those and more
(TIFF, JPEG 2000, PNM, TGA, AVIF): an image in one of those is converted once, by Pillow, to
a PNG under runs/.data/converted/ named by the file's path, size and mtime, and the PNG is
read in its place, so the input pipeline stays pure TensorFlow.

A header is read before anything decodes a file, so that an image of too many pixels (a
40000x40000 PNG decodes to 4.8 GB) can be refused by its size alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from search.runs import atomic

# Suffixes of the files TensorFlow decodes itself (checked on TF 2.21: decode_image reads these).
DECODED_BY_TENSORFLOW = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Pillow's names for those formats. MPO is a camera's JPEG carrying more frames: a JPEG to TF.
TENSORFLOW_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP", "MPO"})
# Formats of images in datasets that Pillow reads and TensorFlow does not (each raises
# "Unknown image file format" in decode_image).
_CONVERTED = {
    ".tif": "TIFF", ".tiff": "TIFF", ".jp2": "JPEG2000", ".j2k": "JPEG2000",
    ".pbm": "PPM", ".pgm": "PPM", ".ppm": "PPM", ".pnm": "PPM", ".tga": "TGA", ".avif": "AVIF",
}  # fmt: skip


def _readable_by_pillow() -> tuple[str, ...]:
    """The converted suffixes this Pillow build has a reader for (AVIF, JPEG 2000 are optional)."""
    Image.init()
    registered = Image.registered_extensions()
    return tuple(s for s, name in _CONVERTED.items() if registered.get(s) == name and name in Image.OPEN)


CONVERTED_SUFFIXES = _readable_by_pillow()
IMAGE_SUFFIXES = DECODED_BY_TENSORFLOW + CONVERTED_SUFFIXES


def kinds() -> str:
    """The accepted suffixes, for messages: "jpg, jpeg, png, ..."."""
    return ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class Header:
    format: str | None  # Pillow's name for it; None when Pillow cannot identify the file
    width: int = 0
    height: int = 0
    error: str = ""  # why Pillow could not identify it

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def converted(self) -> bool:
        """Whether the image needs Pillow (TensorFlow cannot decode its format)."""
        return self.format is not None and self.format not in TENSORFLOW_FORMATS


def _identify(fp: IO[bytes], path: Path) -> tuple[Image.Image | None, str]:
    """Pillow's own identification of a file (what `Image.open` does), without its
    decompression-bomb check: that check raises on a large image before saying its size, and
    warns on stderr from any thread, while the caller applies Data(max_pixels) itself."""
    Image.init()
    fp.seek(0)
    prefix = fp.read(16)
    error = "not an image Pillow knows" if len(prefix) == 16 else f"too short to be an image ({len(prefix)} bytes)"
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        try:
            accepted = accept(prefix) if accept is not None else True
        except Exception:  # noqa: BLE001 - some plugins' accept() unpacks header bytes a short file lacks
            continue
        if not accepted or isinstance(accepted, str):  # a str is Pillow's warning that it is not this format
            continue
        fp.seek(0)
        try:
            return factory(fp, str(path)), ""
        except Exception as e:  # noqa: BLE001 - a plugin's failure on a damaged file: try the next, keep why
            if len(prefix) == 16:
                error = f"{name}: {e}"
    return None, error


def header(path: Path) -> Header:
    """The format and size a file's header declares, read by Pillow without decoding it."""
    try:
        with open(path, "rb") as fp:
            image, error = _identify(fp, path)
            if image is None:
                return Header(None, error=error)
            width, height = image.size
            return Header(image.format, int(width), int(height))
    except OSError as e:
        return Header(None, error=f"cannot read: {e.strerror or e}")


def converted_name(path: Path, size: int, mtime_ns: int) -> str:
    """The converted PNG's name for a file: its path, size and mtime, hashed."""
    key = os.fsencode(str(path.absolute())) + f"\0{size}\0{mtime_ns}".encode()
    return hashlib.sha1(key).hexdigest()[:20] + ".png"


def _rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy, as TensorFlow's decode_image(channels=3) gives for PNGs: 16-bit
    samples scaled down (Pillow's own conversion would clip them at 255), alpha dropped."""
    if image.mode.startswith("I;16"):
        scaled = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.round(scaled).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def convert(path: Path, target: Path) -> str | None:
    """Write `path`'s first frame as an RGB PNG at `target`; None, or why Pillow cannot."""
    try:
        with open(path, "rb") as fp:
            image, error = _identify(fp, path)
            if image is None:
                return f"Pillow cannot read it ({error})"
            image.load()
            rgb = _rgb(image)
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes Pillow raise names the file
        return f"Pillow cannot read it ({type(e).__name__}: {e})"
    # Fast compression: the PNG is read back once, by the first epoch, and kept in memory.
    atomic.write_with(target, lambda tmp: rgb.save(tmp, "PNG", compress_level=1))
    return None
