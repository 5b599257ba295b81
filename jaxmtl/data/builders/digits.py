"""`jaxmtl_digits`: scikit-learn's bundled 8x8 handwritten digits as a TFDS dataset.

Why: it ships inside scikit-learn (no download), so tests and `:runlocal` configs have a real
image-classification task on every machine. 1,797 examples, pixel values 0..16 stored as uint8
0..255 (`round(v * 255 / 16)`), image [8, 8, 1], label int64 in 0..9. Split: stratified,
deterministic (seed `common.SPLIT_SEED`), 1,437 train / 360 test.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jaxmtl.data.builders import common

NUM_TEST = 360


def load_digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'train'|'test': (images uint8 [n, 8, 8, 1], labels int64 [n])}, the stored split."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = common.scale_to_uint8(digits.images, 16)[..., None]
  labels = digits.target.astype(np.int64)
  train, test = common.stratified_split(labels, NUM_TEST, common.SPLIT_SEED)
  return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


class JaxmtlDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn digits, 8x8x1 uint8, 10 classes, 1,437 train / 360 test."""

  VERSION = common.VERSION

  def _info(self) -> tfds.core.DatasetInfo:
    return common.dataset_info(
        self,
        description=__doc__,
        features={
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64),
        },
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    data = load_digits_split()
    return {name: self._generate_examples(*arrays) for name, arrays in data.items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": label}
