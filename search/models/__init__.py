"""Models: what a trial trains.

- `backbones`: the backbone registry (`BACKBONES`) and weights keywords, no Keras needed.
- `optimizers`, `schedules`: the optimizer and learning-rate schedule vocabularies.
- `build`: a backbone with the classifier head on top, its preprocessing inside; compiling.
"""
