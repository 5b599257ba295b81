"""Tests for jaxmtl.data: embedded TFDS builders, sources by name, global batches on a mesh."""
import json
import time

import jax
import numpy as np
import pytest

from jaxmtl.data import batches, sources
from jaxmtl.data.builders import bytes as bytes_lib
from jaxmtl.data.builders import digits as digits_lib
from jaxmtl.data.builders import mnist1d as mnist1d_lib
from jaxmtl.data.builders import multidigits as multidigits_lib

NAMES = ("jaxmtl_digits", "jaxmtl_multidigits", "jaxmtl_mnist1d", "jaxmtl_bytes")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """All embedded datasets, built once per test session into a temporary directory."""
  path = str(tmp_path_factory.mktemp("tfds"))
  for name in NAMES:
    sources.get_builder(name, path)
  return path


@pytest.fixture(scope="session")
def mesh():
  return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _all(source):
  return {k: np.stack([source[i][k] for i in range(len(source))]) for k in source[0]}


@pytest.mark.parametrize("name", NAMES)
def test_builders_match_documented_info(data_dir, name):
  info = sources.dataset_info(name)
  for split, size in info.splits.items():
    source = sources.get_source(name, split, data_dir)
    if name == "jaxmtl_bytes":  # Sizes depend on the Python version's pydoc text.
      size = len(bytes_lib.load_bytes_split(128)[split])
    assert len(source) == size
    example = source[0]
    assert set(example) == set(info.features)
    for key, (shape, dtype) in info.features.items():
      value = np.asarray(example[key])
      assert value.shape == shape, (key, value.shape)
      assert np.dtype(dtype) == np.dtype(type(example[key])) or value.dtype == np.dtype(dtype)
  assert set(info.tasks.values()) <= set(info.features)


def test_digits_order_and_scaling(data_dir):
  expected = digits_lib.load_digits_split()
  for split in ("train", "test"):
    got = _all(sources.get_source("jaxmtl_digits", split, data_dir))
    np.testing.assert_array_equal(got["image"], expected[split][0])
    np.testing.assert_array_equal(got["label"], expected[split][1])
  train_labels, test_labels = expected["train"][1], expected["test"][1]
  assert expected["train"][0].max() == 255 and expected["train"][0].dtype == np.uint8
  assert np.all(np.abs(np.bincount(test_labels) / 360 - np.bincount(train_labels) / 1437) < 0.01)


def test_stratified_split_partitions():
  labels = np.repeat(np.arange(3), [10, 20, 31])
  train, test = digits_lib.common.stratified_split(labels, 12, seed=0)
  assert len(test) == 12 and len(np.intersect1d(train, test)) == 0
  assert len(train) + len(test) == labels.size
  np.testing.assert_array_equal(train, digits_lib.common.stratified_split(labels, 12, 0)[0])


def test_multidigits_labels_and_regions(data_dir):
  from sklearn.datasets import load_digits
  sk = load_digits()
  scaled = digits_lib.common.scale_to_uint8(sk.images, 16)
  _, test_idx = digits_lib.common.stratified_split(sk.target, digits_lib.NUM_TEST, 0)
  stored = _all(sources.get_source("jaxmtl_multidigits", "test", data_dir))
  gen = multidigits_lib.load_multidigits_split()["test"]
  np.testing.assert_array_equal(stored["image"], gen["image"])
  for k in range(200):
    left, right = test_idx[gen["index_left"][k]], test_idx[gen["index_right"][k]]  # sklearn ids
    assert stored["label_left"][k] == sk.target[left]
    assert stored["label_right"][k] == sk.target[right]
    (r0, c0), (r1, c1) = gen["offset_left"][k], gen["offset_right"][k]
    canvas = stored["image"][k, ..., 0]
    expect = np.zeros((16, 16), np.uint8)
    expect[r0:r0 + 8, c0:c0 + 8] = scaled[left]
    np.maximum(expect[r1:r1 + 8, c1:c1 + 8], scaled[right], out=expect[r1:r1 + 8, c1:c1 + 8])
    np.testing.assert_array_equal(canvas, expect)
    # Outside the (at most 4x4) overlap, each region holds exactly its own digit.
    np.testing.assert_array_equal(canvas[r0:r1, c0:c0 + 8], scaled[left][: r1 - r0])
    np.testing.assert_array_equal(canvas[r0 + 8:r1 + 8, c1:c1 + 8], scaled[right][r0 + 8 - r1:])


def test_mnist1d_matches_generator(data_dir):
  expected = mnist1d_lib.load_mnist1d_split()["test"]
  got = _all(sources.get_source("jaxmtl_mnist1d", "test", data_dir))
  np.testing.assert_array_equal(got["x"], expected[0])
  np.testing.assert_array_equal(got["label"], expected[1])
  assert got["x"].dtype == np.float32


def test_bytes_windows_cover_corpus(data_dir):
  corpus = bytes_lib.corpus_bytes()
  builder = sources.get_builder("jaxmtl_bytes", data_dir)
  assert builder.info.metadata["corpus_sha256"] == bytes_lib.corpus_sha256()
  train = _all(sources.get_source("jaxmtl_bytes", "train", data_dir))["tokens"]
  test = _all(sources.get_source("jaxmtl_bytes", "test", data_dir))["tokens"]
  assert train.shape[1] == 129 and train.dtype == np.uint8
  np.testing.assert_array_equal(train[1:, 0], train[:-1, -1])  # Stride seq_len.
  boundary = int(len(corpus) * 0.95)
  assert bytes(train[:, :-1].reshape(-1)) == corpus[: train.shape[0] * 128]
  assert bytes(test[0]) == corpus[boundary:boundary + 129]
  assert len(corpus) - boundary >= test.size - test.shape[0] >= len(corpus) * 0.05 - 129


def test_bytes_seq_len_kwarg():
  tokens = bytes_lib.load_bytes_split(16)["train"]
  assert tokens.shape[1] == 17
  with pytest.raises(ValueError, match="seq_len"):
    bytes_lib.bytes_config(0)


def test_build_is_idempotent(data_dir):
  start = time.perf_counter()
  sources.get_builder("jaxmtl_multidigits", data_dir)
  assert time.perf_counter() - start < 1.0


def test_unknown_embedded_name_lists_valid_names():
  with pytest.raises(ValueError, match="jaxmtl_multidigits.*Did you mean 'jaxmtl_digits'"):
    sources.get_source("jaxmtl_digit", "train", "/nonexistent")
  with pytest.raises(ValueError, match="jaxmtl_digits"):
    sources.dataset_info("digits")


def test_unknown_split(data_dir):
  with pytest.raises(ValueError, match="valid splits: train, test"):
    sources.get_source("jaxmtl_digits", "validation", data_dir)
  assert len(sources.get_source("jaxmtl_digits", "train[:100]", data_dir)) == 100


def test_unprepared_tfds_dataset_fails_fast(tmp_path):
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError, match="tfds build mnist"):
    sources.get_source("mnist", "train", str(tmp_path))
  with pytest.raises(ValueError, match="Did you mean 'mnist'"):
    sources.get_source("mnsit", "train", str(tmp_path))
  assert time.perf_counter() - start < 5.0


def test_dataset_info_tasks():
  assert sources.dataset_info("jaxmtl_multidigits").tasks == {
      "left": "label_left", "right": "label_right"}
  assert sources.dataset_info("jaxmtl_digits").tasks == {"digit": "label"}


# --- batches ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def digits_train(data_dir):
  return sources.get_source("jaxmtl_digits", "train", data_dir)


def _take(iterator, n):
  return [jax.tree.map(np.asarray, next(iterator)) for _ in range(n)]


def test_batch_sharding(digits_train, mesh):
  it = batches.BatchIterator(digits_train, global_batch_size=32, mesh=mesh, seed=0)
  batch = next(it)
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.uint8
  assert batch["image"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert it.element_spec["label"].shape == (32,)


def test_determinism_and_seed(digits_train, mesh):
  make = lambda seed: batches.BatchIterator(digits_train, global_batch_size=32, mesh=mesh,
                                            seed=seed)
  a, b, c = _take(make(1), 3), _take(make(1), 3), _take(make(2), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_state_restore_gives_same_next_batch(digits_train, mesh):
  make = lambda: batches.BatchIterator(digits_train, global_batch_size=64, mesh=mesh, seed=3)
  it = make()
  _take(it, 30)  # Crosses the epoch boundary (22 batches per epoch).
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 2)
  restored = make()
  restored.set_state(state)
  np.testing.assert_array_equal(np.asarray(restored.peek()["label"]), expected[0]["label"])
  for x, y in zip(_take(restored, 2), expected):
    np.testing.assert_array_equal(x["image"], y["image"])
  with pytest.raises(ValueError, match="seed"):
    make().set_state({**state, "seed": 4})


def test_epochs_reshuffle_and_cover(digits_train, mesh):
  source = list(range(48))
  src = [{"i": np.int32(i)} for i in source]
  it = batches.BatchIterator(src, global_batch_size=8, mesh=mesh, seed=0, num_epochs=2)
  rows = np.concatenate([b["i"] for b in _take(it, 12)])
  assert it.num_batches == 12
  assert sorted(rows[:48]) == source and sorted(rows[48:]) == source
  assert not np.array_equal(rows[:48], rows[48:])
  with pytest.raises(StopIteration):
    next(it)


def test_two_processes_read_disjoint_rows_of_the_same_global_batch(digits_train, mesh):
  kwargs = dict(global_batch_size=32, mesh=mesh, seed=5)
  one = batches.BatchIterator(digits_train, **kwargs)
  two = [batches.BatchIterator(digits_train, process_index=p, process_count=2, **kwargs)
         for p in range(2)]
  for step in (0, 7, 50):
    full = one.local_batch(step)
    parts = [it.local_batch(step) for it in two]
    for key in full:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])
  assert batches.local_rows(32, 1, 2) == slice(16, 32)
  with pytest.raises(ValueError, match="multiple"):
    batches.local_rows(30, 0, 4)


def test_no_drop_remainder_pads_with_mask(digits_train, mesh):
  it = batches.BatchIterator(digits_train, global_batch_size=64, mesh=mesh, seed=0,
                             shuffle=False, num_epochs=1, drop_remainder=False)
  got = _take(it, it.num_batches)
  assert sum(int(b["mask"].sum()) for b in got) == len(digits_train) == 1437
  labels = np.concatenate([b["label"][b["mask"]] for b in got])
  np.testing.assert_array_equal(labels, _all(digits_train)["label"])


def test_iterate_numpy_covers_split_exactly(digits_train):
  got = list(batches.iterate_numpy(digits_train, 100))
  assert len(got) == 15 and all(b["image"].shape == (100, 8, 8, 1) for b in got)
  assert got[-1]["mask"].sum() == 37 and not got[-1]["image"][37:].any()
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in got])[:1437],
                                _all(digits_train)["label"])


def test_bad_batch_arguments(digits_train, mesh):
  with pytest.raises(ValueError, match="multiple of 4"):
    batches.BatchIterator(digits_train, global_batch_size=30, mesh=mesh, seed=0)
  with pytest.raises(ValueError, match="batch_axes"):
    batches.BatchIterator(digits_train, global_batch_size=32, mesh=mesh, seed=0,
                          batch_axes=("batch",))


# --- mixture ----------------------------------------------------------------------------

from jaxmtl.data import mixture  # noqa: E402


def test_mixture_probabilities():
  sizes = {"a": 100, "b": 400}
  assert mixture.mixture_probabilities(sizes) == pytest.approx({"a": 0.2, "b": 0.8})
  assert mixture.mixture_probabilities(sizes, "temperature", 2.0) == pytest.approx(
      {"a": 1 / 3, "b": 2 / 3})
  assert mixture.mixture_probabilities(sizes, "uniform") == {"a": 0.5, "b": 0.5}
  with pytest.raises(ValueError, match="valid modes"):
    mixture.mixture_probabilities(sizes, "size")


def test_mixture_deterministic_and_checkpointable(digits_train, mesh, data_dir):
  multi = sources.get_source("jaxmtl_multidigits", "train", data_dir)
  probs = mixture.mixture_probabilities({"digits": 1437, "multi": 8000}, "temperature", 2.0)

  def make():
    its = {"digits": batches.BatchIterator(digits_train, global_batch_size=16, mesh=mesh, seed=0),
           "multi": batches.BatchIterator(multi, global_batch_size=16, mesh=mesh, seed=1)}
    return mixture.TaskMixture(its, probs, seed=7)

  a = make()
  first = [next(a)[0] for _ in range(20)]
  again = make()
  assert [next(again)[0] for _ in range(20)] == first and set(first) == set(probs)
  state = json.loads(json.dumps(a.get_state()))
  expected = [next(a) for _ in range(3)]
  b = make()
  b.set_state(state)
  for (task_x, x), (task_y, y) in zip([next(b) for _ in range(3)], expected):
    assert task_x == task_y
    np.testing.assert_array_equal(np.asarray(x["image"]), np.asarray(y["image"]))
  counts = [mixture.task_for_step(probs, 0, s) for s in range(4000)].count("multi") / 4000
  assert counts == pytest.approx(probs["multi"], abs=0.03)


def test_bulk_reads_give_the_same_batches_as_per_example_reads(digits_train, mesh):
  class PerExample:  # the same source without __getitems__
    def __init__(self, base):
      self.base = base

    def __len__(self):
      return len(self.base)

    def __getitem__(self, i):
      return self.base[i]

  for kw in ({}, {"num_epochs": 2, "drop_remainder": False, "shuffle": False}):
    bulk = batches.BatchIterator(digits_train, global_batch_size=96, mesh=mesh, seed=3, **kw)
    each = batches.BatchIterator(PerExample(digits_train), global_batch_size=96, mesh=mesh, seed=3, **kw)
    for step in (0, 1, 14, 15, 29):
      a, b = bulk.local_batch(step), each.local_batch(step)
      assert a.keys() == b.keys()
      for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])
