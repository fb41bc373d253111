"""Frozen backbones built once per process and shared by the trials that use them.

A head sweep on a frozen backbone builds the same backbone, from the same weights, in every
trial; on cached features that build is a large part of a trial. A trial whose backbone stays
frozen (its weights never change: `trainable` off, called in inference mode) can take the
backbone an earlier trial of this process built. Each trial still gets a model of its own
(new input, preprocessing, pooling and head around the shared backbone), saved whole as usual.

Two things keep a shared build indistinguishable from a fresh one:

- Random draws. Building a backbone draws one Python random number per initializer, even
  when its weights then come from a file; the head's initializers draw after it. A shared
  build replays the same number of draws, so a head starts from the weights it would have.
- The functional graph. Each model built around the backbone adds a node to it, and that node
  keeps the model's other layers alive. A new model drops the nodes of the models built before
  it, so a process keeps one trial's head at a time; a model built with a shared backbone
  must therefore be saved before the next one is built (the search loop does).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable

import keras

# Backbones kept at a time (one per backbone, weights and image size).
KEEP = 2
# A backbone whose build draws more than this (or draws otherwise than Keras' default seeds)
# is not shared: replaying its draws could not be exact.
MAX_DRAWS = 100_000

Key = tuple[str, str, int]


class _Entry:
    def __init__(self, backbone: keras.Model, draws: int):
        self.backbone, self.draws = backbone, draws
        self.inbound = len(backbone._inbound_nodes)
        self.outbound = len(backbone._outbound_nodes)


_built: OrderedDict[Key, _Entry] = OrderedDict()


def frozen_backbone(key: Key, construct: Callable[[], keras.Model]) -> keras.Model:
    """The backbone of `key` built by `construct()` once, frozen; the same object afterwards."""
    entry = _built.get(key)
    if entry is not None and not entry.backbone.trainable:
        _built.move_to_end(key)
        for _ in range(entry.draws):
            random.randint(1, int(1e9))  # keras.random.make_default_seed, once per initializer
        del entry.backbone._inbound_nodes[entry.inbound:]  # the models built on it before: gone
        del entry.backbone._outbound_nodes[entry.outbound:]
        return entry.backbone
    before = random.getstate()
    backbone = construct()
    backbone.trainable = False
    draws = _draws_between(before, random.getstate())
    if draws is not None:
        _built[key] = _Entry(backbone, draws)
        while len(_built) > KEEP:
            _built.popitem(last=False)
    else:
        _built.pop(key, None)
    return backbone


def _draws_between(before: tuple, after: tuple) -> int | None:
    """How many `randint(1, 1e9)` draws lead from state `before` to `after` (None: not that way)."""
    now = random.getstate()
    random.setstate(before)
    try:
        for draws in range(MAX_DRAWS + 1):
            if random.getstate() == after:
                return draws
            random.randint(1, int(1e9))
        return None
    finally:
        random.setstate(now)


def forget() -> None:
    """Drop every shared backbone (tests; a process that changes weights files in place)."""
    _built.clear()
