"""The merging task suite: transforms by hand, offline builds, registration, shared-data tasks."""
import gzip

import numpy as np
import pytest

from jaxmtl import tasks as tasks_lib
from jaxmtl.data import sources
from jaxmtl.data.builders import digits as digits_lib
from jaxmtl.data.builders import suite


def test_pool28_and_upsample2_by_hand():
  x = np.zeros((1, 28, 28), np.uint8)
  x[0, 0:2, 0:2] = [[10, 20], [30, 41]]          # mean 25.25 -> 25
  x[0, 26:28, 26:28] = 255
  out = suite.pool28(x)
  assert out.shape == (1, 16, 16, 1) and out.dtype == np.uint8
  assert out[0, 1, 1, 0] == 25 and out[0, 14, 14, 0] == 255
  assert out[0, 0].max() == 0 and out[0, :, 0].max() == 0  # the zero border
  assert out.sum() == 25 + 255
  d = np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1)
  up = suite.upsample2(d)
  assert up.shape == (1, 16, 16, 1)
  np.testing.assert_array_equal(up[0, 2:4, 6:8, 0], np.full((2, 2), d[0, 1, 3, 0]))


def test_render_signals_draws_a_line_plot():
  ramp = np.linspace(0.0, 1.0, 40)[None]            # rises from bottom-left to top-right
  img = suite.render_signals(ramp, lo=0.0, hi=1.0)[0, ..., 0]
  assert img.shape == (16, 16) and set(np.unique(img)) <= {0, 255}
  rows = [np.flatnonzero(img[:, c]) for c in range(16)]
  assert rows[0][-1] == 15 and rows[-1][0] == 0     # value 0 -> last row, value 1 -> row 0
  assert all(len(r) for r in rows)                  # every column is drawn (connected)
  flat = suite.render_signals(np.full((1, 40), 0.5), 0.0, 1.0)[0, ..., 0]
  assert (flat > 0).sum() == 16 and np.all(flat[8] == 255)  # round(7.5) = 8


def test_permutation_is_fixed_and_shared_by_splits():
  x = np.arange(2 * 256, dtype=np.int64).reshape(2, 16, 16, 1) % 256
  a, b = suite.permute_pixels(x, 7), suite.permute_pixels(x, 7)
  np.testing.assert_array_equal(a, b)
  perm = np.random.default_rng(7).permutation(256)
  np.testing.assert_array_equal(a[0].ravel(), x[0].ravel()[perm])
  assert not np.array_equal(suite.permute_pixels(x, 8), a)


def test_read_idx(tmp_path):
  data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  raw = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
  path = tmp_path / "x-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(raw + data.tobytes())
  np.testing.assert_array_equal(suite.read_idx(path), data)
  bad = tmp_path / "bad.gz"
  with gzip.open(bad, "wb") as f:
    f.write(b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\x00" * 4)
  with pytest.raises(ValueError, match="not an unsigned-byte idx"):
    suite.read_idx(bad)


def test_small_suite_arrays():
  ref = digits_lib.load_digits_split()
  d = suite.digits_split()
  p = suite.digits_perm_split()
  for split in ("train", "test"):
    np.testing.assert_array_equal(d[split][0], suite.upsample2(ref[split][0]))
    np.testing.assert_array_equal(d[split][1], ref[split][1])
    np.testing.assert_array_equal(p[split][0], suite.permute_pixels(d[split][0], 1))
  m = suite.multidigits_split()
  assert m["train"][0].shape == (8000, 16, 16, 1) and m["test"][1].shape == (2000,)


def test_small_task_builds_offline_and_matches_its_info(data_dir):
  name = suite.dataset_name("digits_perm")
  info = sources.dataset_info(name)
  assert info.tasks == {"suite_digits_perm": "label"}
  builder = sources.get_builder(name, data_dir)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == info.splits
  src = sources.get_source(name, "test", data_dir)
  want = suite.digits_perm_split()["test"]
  got = np.stack([src[i]["image"] for i in range(len(src))])
  np.testing.assert_array_equal(got, want[0])
  np.testing.assert_array_equal([src[i]["label"] for i in range(len(src))], want[1])
  spec = tasks_lib.data_spec(name, data_dir)
  assert spec.input_shape == suite.SHAPE and [t.name for t in spec.tasks] == ["suite_digits_perm"]
  # In a mixture the task keeps the same name (so fine-tuned and MTL heads share paths).
  mix, _ = tasks_lib.mixture_spec((name, suite.dataset_name("digits")), data_dir)
  assert [t.name for t in mix.tasks] == ["suite_digits_perm", "suite_digits"]


def test_every_task_is_registered():
  for t in suite.TASKS:
    name = suite.dataset_name(t.name)
    assert name in sources.embedded_names()
    info = sources.dataset_info(name)
    assert info.features["image"] == (suite.SHAPE, "uint8")
    assert tuple(info.splits.values()) == t.sizes


def test_shared_task_without_shared_data_names_the_path(tmp_path, monkeypatch):
  monkeypatch.setenv(suite.SHARED_ENV, str(tmp_path))
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    suite.mnist_split()


def test_shared_tasks(shared_data, monkeypatch):
  monkeypatch.setenv(suite.SHARED_ENV, str(shared_data))
  raw = suite.read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")
  labels = suite.read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")
  mn = suite.mnist_split()
  assert [len(mn[s][1]) for s in ("train", "test")] == [8000, 2000]
  pooled = suite.pool28(raw)
  # Stratified: every class keeps its share (largest remainders) in the test split.
  np.testing.assert_allclose(np.bincount(mn["test"][1]), np.bincount(labels) / 5, atol=1)
  rows = {pooled[i].tobytes() for i in range(len(pooled))}
  assert all(x.tobytes() in rows for x in mn["test"][0][:50])
  mm = suite.mnist_m_split()
  fashion_test = suite.pool28(suite.read_idx(
      shared_data / "fashion_mnist" / "t10k-images-idx3-ubyte.gz"))
  pick = np.random.default_rng(5).integers(0, len(fashion_test), 2000)
  want = np.abs(fashion_test[pick].astype(int) - mn["test"][0].astype(int))
  np.testing.assert_array_equal(mm["test"][0], want)
  fp = suite.fashion_perm_split()
  assert [len(fp[s][1]) for s in ("train", "test")] == [8000, 2000]
