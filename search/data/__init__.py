"""Images on disk to training batches.

- `dataset`: `open_data` finds, checks and indexes a dataset once; `ImageData.dataset` gives
  the tf.data pipelines every trial uses. `decode_image` is how every command decodes.
- `folders`: class folders, and the one-time check that every image decodes.
- `formats`: what an image's header says; formats only Pillow reads, converted to PNG once.
- `archive`: a dataset .zip, checked and extracted once.
- `tfrecord`: Petals-to-the-Metal TFRecords, and Kaggle's four sizes of them.
- `builtin`: `builtin:digits` and `builtin:fashion-mnist`, the offline datasets.
- `pipeline`: the first epoch decodes into memory, later ones read it.
- `augment`: the augmentation policies (`POLICIES`) and their test-time views.
- `policies`: their names and meanings, light enough to check a space before TensorFlow.
"""
