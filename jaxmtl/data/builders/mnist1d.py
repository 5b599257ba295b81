"""`jaxmtl_mnist1d`: MNIST-1D (Greydanus 2020, arXiv:2011.14439) from its own generator.

Why: a small, hard-enough 1-D classification benchmark produced offline by the `mnist1d`
package (`make_dataset(get_dataset_args())`, the published default arguments, seed 42) —
never its `get_dataset()`, which tries to download first. x float32 [40, 1], label int64 0..9;
the generator's own split: 4,000 train / 1,000 test.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jaxmtl.data.builders import common

LENGTH = 40


def load_mnist1d_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'train'|'test': (x float32 [n, 40, 1], y int64 [n])} from the mnist1d generator."""
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=import-outside-toplevel
  data = make_dataset(get_dataset_args())
  return {
      "train": (np.asarray(data["x"], np.float32)[..., None], np.asarray(data["y"], np.int64)),
      "test": (np.asarray(data["x_test"], np.float32)[..., None],
               np.asarray(data["y_test"], np.int64)),
  }


class JaxmtlMnist1d(tfds.core.GeneratorBasedBuilder):
  """MNIST-1D: x float32 [40, 1], label int64, 4,000 train / 1,000 test."""

  VERSION = common.VERSION

  def _info(self) -> tfds.core.DatasetInfo:
    return common.dataset_info(
        self,
        description=__doc__,
        features={
            "x": tfds.features.Tensor(shape=(LENGTH, 1), dtype=np.float32),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64),
        },
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    data = load_mnist1d_split()
    return {name: self._generate_examples(*arrays) for name, arrays in data.items()}

  def _generate_examples(self, xs, labels):
    for i, (x, label) in enumerate(zip(xs, labels)):
      yield i, {"x": x, "label": label}
