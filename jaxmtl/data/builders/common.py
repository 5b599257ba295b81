"""Shared helpers for jaxmtl's embedded TFDS builders.

The builders store `tfds.features.Tensor` features only (never `Image`, whose encoder needs
TensorFlow) in the `array_record` file format, keep generator order
(`disable_shuffling=True`), and derive every split from an explicit seed, so that the same
package versions always produce byte-identical records.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

VERSION = tfds.core.Version("1.0.0")
SPLIT_SEED = 0  # Seed of every deterministic split and pairing in the embedded builders.


def scale_to_uint8(values: np.ndarray, max_value: int) -> np.ndarray:
  """Maps integers in [0, max_value] linearly to uint8 [0, 255] (rounded to nearest)."""
  values = np.asarray(values, dtype=np.float64)
  return np.rint(values * (255.0 / max_value)).astype(np.uint8)


def stratified_split(labels: np.ndarray, num_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic stratified split: (train_indices, test_indices), each sorted.

  Each class contributes to the test split in proportion to its size (largest-remainder
  rounding so that exactly `num_test` indices are chosen); which members of a class go to the
  test split is a seeded permutation. Implemented here (not sklearn's `train_test_split`) so
  the split cannot change with the scikit-learn version.
  """
  labels = np.asarray(labels)
  classes, counts = np.unique(labels, return_counts=True)
  quota = counts * (num_test / labels.size)
  take = np.floor(quota).astype(np.int64)
  remainder_order = np.argsort(-(quota - take), kind="stable")
  take[remainder_order[: num_test - int(take.sum())]] += 1
  rng = np.random.default_rng(seed)
  test = []
  for cls, k in zip(classes, take):
    members = np.flatnonzero(labels == cls)
    test.append(rng.permutation(members)[:k])
  test = np.sort(np.concatenate(test))
  train = np.setdiff1d(np.arange(labels.size), test)
  return train, test


def dataset_info(builder, description: str, features: dict, metadata: dict | None = None):
  """A `tfds.core.DatasetInfo` with generator order kept (no TFDS write-shuffle)."""
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict(features),
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(metadata or {}),
      license="see docs/data.md",
  )
