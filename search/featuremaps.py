"""python -m search.featuremaps SPACE --image PATH: what a model's convolutions see (Level 3).

For one picture, writes one PNG per chosen convolution layer of the model's backbone: a
grid of its channels (up to 64), titled with the layer's name and output shape. The model
is a trial's, the champion (its first member) or any saved `.keras` file; the picture goes
through the layers in front of the backbone first (its preprocessing), as in training.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.cli import Parser, entry, fail
from search import compat
from search.errors import SearchError, did_you_mean

MAX_CHANNELS = 64
DEFAULT_LAYERS = 4
CONV_TYPES = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")


def backbone_path(model: Any) -> tuple[list[Any], Any]:
    """The sub-models that take a model's input to its innermost nested model (the backbone),
    and that backbone. Each step runs the layers in front of one nested model."""
    import keras

    steps: list[Any] = []
    while True:
        nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
        if not nested:
            return steps, model
        inner = nested[0]
        # The tensor the outer graph feeds this nested model (the output of the preprocessing).
        fed = compat.tensor_fed_to(inner)
        steps.append(keras.Model(model.inputs[0], fed, name=f"before_{inner.name}"))
        model = inner


def conv_layers(backbone: Any) -> list[Any]:
    """The backbone's convolutions with a spatial output, shallow to deep."""
    found = []
    for layer in backbone.layers:
        shape = getattr(layer, "output", None) is not None and tuple(layer.output.shape)
        if type(layer).__name__ in CONV_TYPES and shape and len(shape) == 4:
            found.append(layer)
    wide = [layer for layer in found if (layer.output.shape[1] or 0) > 1]
    return wide or found


def choose_layers(layers: list[Any], wanted: str | None) -> list[Any]:
    """`wanted`: a number N (N layers evenly spread, first and last included) or layer names."""
    if not layers:
        raise SearchError("the model's backbone has no convolution layers to draw.")
    if wanted is None or wanted.strip().isdigit():
        count = int(wanted) if wanted else DEFAULT_LAYERS
        if count < 1:
            raise SearchError(f"--layers {wanted}: give a number >= 1 or layer names.")
        picks = np.unique(np.linspace(0, len(layers) - 1, min(count, len(layers))).round().astype(int))
        return [layers[i] for i in picks]
    by_name = {layer.name: layer for layer in layers}
    chosen = []
    for name in (n.strip() for n in wanted.split(",") if n.strip()):
        if name not in by_name:
            shown = ", ".join(list(by_name)[:12]) + (", ..." if len(by_name) > 12 else "")
            raise SearchError(f"--layers: no convolution layer {name!r}.{did_you_mean(name, by_name)} Some: {shown}")
        chosen.append(by_name[name])
    return chosen


def load_image(path: Path, size: int) -> np.ndarray:
    """(1, size, size, 3) float32 pixels in 0..255, decoded and resized as in training."""
    import tensorflow as tf

    from search.data.dataset import decode_image

    if not path.is_file():
        raise SearchError(f"--image {path}: no such file.")
    try:
        image = decode_image(tf.io.read_file(str(path)), size)
    except tf.errors.InvalidArgumentError:
        raise SearchError(f"--image {path}: not an image TensorFlow can decode (JPEG, PNG, BMP, GIF, WEBP).") from None
    return image.numpy()[None].astype("float32")


def draw(maps: np.ndarray, title: str, path: Path) -> Path:
    """A grid of the first MAX_CHANNELS channels of one (height, width, channels) map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channels = min(maps.shape[-1], MAX_CHANNELS)
    cols = int(np.ceil(np.sqrt(channels)))
    rows = int(np.ceil(channels / cols))
    figure, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.6), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < channels:
            axis.imshow(maps[..., index], cmap="viridis")
    figure.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(figure)
    return path


def feature_maps(model: Any, image: np.ndarray, layers: str | None, out: Path) -> list[Path]:
    """Write one grid per chosen layer for `image` (1, size, size, 3); return the files."""
    import keras

    steps, backbone = backbone_path(model)
    x = image
    for step in steps:
        x = np.asarray(step(x, training=False))
    chosen = choose_layers(conv_layers(backbone), layers)
    probe = keras.Model(backbone.inputs[0], [layer.output for layer in chosen])
    outputs = probe(x, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    written = []
    for index, (layer, values) in enumerate(zip(chosen, outputs), start=1):
        values = np.asarray(values)[0]
        title = f"{backbone.name} / {layer.name}  {tuple(values.shape)}"
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", layer.name)
        written.append(draw(values, title, out / f"{index:02d}_{name}.png"))
    return written


def _model_file(args: argparse.Namespace, space_dir: Path) -> tuple[Path, str]:
    if args.model:
        path = Path(args.model)
        if not path.is_file():
            raise SearchError(f"--model {path}: no such file.")
        return path, re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)
    if args.trial is not None:
        path = space_dir / "trials" / args.trial / "model.keras"
        if not path.is_file():
            have = sorted(p.parent.name for p in (space_dir / "trials").glob("*/model.keras"))
            raise SearchError(f"--trial {args.trial}: no model at {path}. Trials with a model: {', '.join(have) or 'none'}.")
        return path, f"trial-{args.trial}"
    from search.runs.layout import SpaceDir, served_model

    path, note = served_model(SpaceDir(space_dir))
    if note:
        print(note, file=sys.stderr)
    return path, path.stem


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        "python -m search.featuremaps",
        "Draw the feature maps of a model's convolution layers for one picture.",
        "examples:\n  python -m search.featuremaps spaces/celeb_mobile.py --image face.jpg\n"
               "  python -m search.featuremaps spaces/digits.py --trial 0 --image 3.png --layers Conv1,Conv_1",
    )
    p.add_saved_search()
    p.add_argument("--image", required=True, metavar="PATH", help="the picture to look at")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", metavar="ID", help="a trial's model (runs/<space>/trials/<ID>/model.keras)")
    which.add_argument("--champion", action="store_true", help="the champion (default; else best.keras)")
    which.add_argument("--model", metavar="FILE", help="any saved .keras model")
    p.add_argument("--layers", metavar="N|NAMES", help=f"how many conv layers, spread shallow to deep "
                   f"(default {DEFAULT_LAYERS}), or comma-separated layer names")
    p.add_argument("--out", metavar="DIR", help="where to write (default: runs/<space>/featuremaps/<model>/)")
    p.add_argument("--no-tracking", action="store_true", help="do not log the pictures to MLflow")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import keras

        import search.models.build  # noqa: F401 - registers the custom loss some saved models name
        from search.results.saved import locate

        saved = locate(args.space, Path(args.runs_dir))
        model_path, label = _model_file(args, saved.space_dir)
        model = keras.models.load_model(model_path, compile=False)
        size = int(model.input_shape[1])
        image = load_image(Path(args.image), size)
        out = Path(args.out) if args.out else saved.space_dir / "featuremaps" / label
        written = feature_maps(model, image, args.layers, out)
    except SearchError as e:
        return fail(e)
    for path in written:
        print(path)
    if not args.no_tracking:
        from search.tracking.client import attach

        print(attach(saved.folder, written, f"featuremaps/{label}"))
    return 0


if __name__ == "__main__":
    entry(main)
