"""The augmentation policies' names and meanings: the words a space's `augmentation` takes.

Light on purpose (no TensorFlow): a space's values are checked against them before
TensorFlow is imported. Their layers and test-time views are `search.data.augment`'s.
"""

from __future__ import annotations

DESCRIPTIONS: dict[str, str] = {
    "none": "no augmentation",
    "faces": "the report's Level 2: rotation 10 degrees, zoom and shifts 10%, horizontal flips (one warp)",
    "flowers": "the report's Level 1: upscale and random crop, rot90 and transpose, flips both ways",
}
