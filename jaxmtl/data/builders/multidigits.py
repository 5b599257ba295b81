"""`jaxmtl_multidigits`: MultiMNIST-style two-digit canvases built from scikit-learn digits.

Why: a genuine two-task image problem (classify the left digit, classify the right digit;
the MultiMNIST setting of Sabour et al. 2017, arXiv:1710.09829, as used for MTL by Sener &
Koltun 2018, arXiv:1810.04650) that needs no download.

Each example is a 16x16x1 uint8 canvas: the left digit's 8x8 image is placed at offset
(dy, dx) with dy, dx in {0, 1, 2} (top-left), the right digit's at (6 + dy', 6 + dx') with
dy', dx' in {0, 1, 2} (bottom-right); where they overlap the pixel is the max of the two.
Labels: `label_left`, `label_right` (int64 0..9). Train: 8,000 pairs drawn (with replacement,
seeded) from the `jaxmtl_digits` train split; test: 2,000 pairs from its test split only.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jaxmtl.data.builders import common
from jaxmtl.data.builders import digits as digits_lib

CANVAS = 16
MAX_SHIFT = 2  # Offsets are drawn uniformly from {0, ..., MAX_SHIFT}.
RIGHT_BASE = 6  # Right digit's offset = RIGHT_BASE + shift.
SIZES = {"train": 8000, "test": 2000}


def make_pairs(images: np.ndarray, labels: np.ndarray, num: int,
               seed: int) -> dict[str, np.ndarray]:
  """Builds `num` canvases from `images` uint8 [n, 8, 8, 1] and `labels` int64 [n].

  Returns image uint8 [num, 16, 16, 1], label_left / label_right int64 [num], and the
  generating indices `index_left` / `index_right` int64 [num] and offsets
  `offset_left` / `offset_right` int64 [num, 2] (row, column), for checks.
  """
  rng = np.random.default_rng(seed)
  index = rng.integers(0, len(labels), size=(num, 2))
  shift = rng.integers(0, MAX_SHIFT + 1, size=(num, 2, 2))
  offset_left, offset_right = shift[:, 0], shift[:, 1] + RIGHT_BASE
  canvas = np.zeros((num, CANVAS, CANVAS, 1), dtype=np.uint8)
  for k in range(num):
    for idx, (r, c) in ((index[k, 0], offset_left[k]), (index[k, 1], offset_right[k])):
      region = canvas[k, r:r + 8, c:c + 8]
      np.maximum(region, images[idx], out=region)
  return {
      "image": canvas,
      "label_left": labels[index[:, 0]].astype(np.int64),
      "label_right": labels[index[:, 1]].astype(np.int64),
      "index_left": index[:, 0].astype(np.int64),
      "index_right": index[:, 1].astype(np.int64),
      "offset_left": offset_left.astype(np.int64),
      "offset_right": offset_right.astype(np.int64),
  }


def load_multidigits_split() -> dict[str, dict[str, np.ndarray]]:
  """{'train'|'test': make_pairs(...)} exactly as stored (seed SPLIT_SEED + split number)."""
  data = digits_lib.load_digits_split()
  return {
      name: make_pairs(*data[name], SIZES[name], seed=common.SPLIT_SEED + i)
      for i, name in enumerate(("train", "test"))
  }


class JaxmtlMultidigits(tfds.core.GeneratorBasedBuilder):
  """Two overlaid sklearn digits on a 16x16x1 uint8 canvas; tasks left / right."""

  VERSION = common.VERSION

  def _info(self) -> tfds.core.DatasetInfo:
    return common.dataset_info(
        self,
        description=__doc__,
        features={
            "image": tfds.features.Tensor(shape=(CANVAS, CANVAS, 1), dtype=np.uint8),
            "label_left": tfds.features.Tensor(shape=(), dtype=np.int64),
            "label_right": tfds.features.Tensor(shape=(), dtype=np.int64),
        },
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    data = load_multidigits_split()
    return {name: self._generate_examples(arrays) for name, arrays in data.items()}

  def _generate_examples(self, arrays):
    keys = ("image", "label_left", "label_right")
    for i in range(len(arrays["image"])):
      yield i, {key: arrays[key][i] for key in keys}
