"""The merging task suite: 16x16x1 uint8 image classification tasks from different domains.

Every task shares one input shape (image uint8 [16, 16, 1], label int64 in 0..9), so one
backbone serves all of them, while domains differ (handwriting at two resolutions, clothing,
rendered 1-D signals, two-digit canvases, digits on clothing backgrounds, fixed pixel
permutations), so their task vectors interfere, as in the 8-task ViT benchmark of task
arithmetic (arXiv 2212.04089) and AdaMerging (arXiv 2310.02575). See docs/merging.md.

Sources (all offline):
  * scikit-learn's bundled 8x8 digits (``digits``), upsampled 2x by pixel repetition;
  * the ``mnist1d`` generator (Greydanus 2020, arXiv 2011.14439), signals drawn as line plots;
  * MNIST / Fashion-MNIST idx files from ``../shared/data`` (or ``$JAXMTL_SHARED_DATA``), 2x2
    mean-pooled 28x28 -> 14x14 and zero-padded to 16x16. MNIST's train images are not there,
    so MNIST tasks split its 10,000 test images (8,000 / 2,000, stratified, seeded).

Each task is one embedded TFDS dataset ``jaxmtl_suite_<task>`` whose single task is named
``suite_<task>`` (the name a ``data.mixture`` gives it, so single-task fine-tunes and the joint
multi-task model share head paths). Splits are deterministic (seed ``common.SPLIT_SEED``).
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from jaxmtl.data.builders import common
from jaxmtl.data.builders import digits as digits_lib
from jaxmtl.data.builders import multidigits as multidigits_lib

SIZE = 16
SHAPE = (SIZE, SIZE, 1)
NUM_CLASSES = 10
SHARED_ENV = "JAXMTL_SHARED_DATA"
_MNIST_TEST = 2000
Split = dict[str, tuple[np.ndarray, np.ndarray]]


def shared_data_dir() -> pathlib.Path:
  """``$JAXMTL_SHARED_DATA``, else ``../shared/data`` beside the repository."""
  env = os.environ.get(SHARED_ENV)
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path(__file__).resolve().parents[3].parent / "shared" / "data"


def read_idx(path: pathlib.Path) -> np.ndarray:
  """An idx(.gz) file (LeCun's MNIST format: magic 0x0000 08 <ndim>, big-endian dims) as uint8."""
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    data = f.read()
  if data[:2] != b"\x00\x00" or data[2] != 0x08:
    raise ValueError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()})")
  ndim = data[3]
  dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _shared_file(*parts: str) -> pathlib.Path:
  path = shared_data_dir().joinpath(*parts)
  if not path.exists():
    raise FileNotFoundError(
        f"{path} is missing: this suite task needs the MNIST / Fashion-MNIST idx files of "
        f"../shared/data (see its SOURCES.md), or ${SHARED_ENV} pointing at such a directory. "
        "The small suite (digits, mnist1d, multidigits, digits_perm) needs nothing beyond the "
        "installed packages.")
  return path


def pool28(images: np.ndarray) -> np.ndarray:
  """uint8 [n, 28, 28] -> [n, 16, 16, 1]: 2x2 mean pool (rounded) to 14x14, zero pad 1."""
  x = images.astype(np.float32).reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4))
  x = np.pad(np.rint(x), ((0, 0), (1, 1), (1, 1)))
  return x.astype(np.uint8)[..., None]


def upsample2(images: np.ndarray) -> np.ndarray:
  """uint8 [n, 8, 8, 1] -> [n, 16, 16, 1] by repeating every pixel 2x2."""
  return images.repeat(2, axis=1).repeat(2, axis=2)


def render_signals(signals: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """float [n, L] -> uint8 [n, 16, 16, 1]: the signal as a line plot.

  Linearly resampled at 16 columns; value v maps to row ``round((hi - v) / (hi - lo) * 15)``
  (clipped); each column lights the rows between its point and the next (255).
  """
  n, length = signals.shape
  cols = np.linspace(0.0, length - 1.0, SIZE)
  values = np.stack([np.interp(cols, np.arange(length), s) for s in signals])
  rows = np.clip(np.rint((hi - values) / (hi - lo) * (SIZE - 1)), 0, SIZE - 1).astype(np.int64)
  nxt = np.concatenate([rows[:, 1:], rows[:, -1:]], axis=1)
  top, bottom = np.minimum(rows, nxt), np.maximum(rows, nxt)
  r = np.arange(SIZE)[None, :, None]
  img = (r >= top[:, None, :]) & (r <= bottom[:, None, :])
  return (img * 255).astype(np.uint8)[..., None]


def permute_pixels(images: np.ndarray, seed: int) -> np.ndarray:
  """The same fixed pixel permutation (``default_rng(seed).permutation(256)``) on every image
  ("permuted MNIST", Goodfellow et al. 2013, arXiv 1312.6211)."""
  perm = np.random.default_rng(seed).permutation(SIZE * SIZE)
  return images.reshape(len(images), -1)[:, perm].reshape(images.shape)


def _split(images: np.ndarray, labels: np.ndarray, num_test: int, seed: int) -> Split:
  train, test = common.stratified_split(labels, num_test, seed)
  return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


# ------------------------------------------------------------------------------ the tasks


def digits_split() -> Split:
  """sklearn digits upsampled to 16x16; jaxmtl_digits' split (1,437 / 360)."""
  data = digits_lib.load_digits_split()
  return {k: (upsample2(x), y) for k, (x, y) in data.items()}


def digits_perm_split() -> Split:
  """``digits`` with a fixed pixel permutation (seed 1)."""
  return {k: (permute_pixels(x, 1), y) for k, (x, y) in digits_split().items()}


def mnist1d_split() -> Split:
  """MNIST-1D (published generator defaults, seed 42; 4,000 / 1,000) drawn as line plots,
  rows spanning the 1st..99th percentile of all training values."""
  from jaxmtl.data.builders import mnist1d as mnist1d_lib  # pylint: disable=import-outside-toplevel
  data = mnist1d_lib.load_mnist1d_split()
  lo, hi = np.percentile(data["train"][0], [1, 99])
  return {k: (render_signals(x[..., 0], lo, hi), y) for k, (x, y) in data.items()}


def multidigits_split() -> Split:
  """jaxmtl_multidigits' canvases (two overlaid sklearn digits), label = the right digit."""
  data = multidigits_lib.load_multidigits_split()
  return {k: (v["image"], v["label_right"]) for k, v in data.items()}


def mnist_split() -> Split:
  """MNIST's 10,000 test images, pooled to 16x16, split 8,000 / 2,000 (stratified)."""
  x = pool28(read_idx(_shared_file("mnist", "t10k-images-idx3-ubyte.gz")))
  y = read_idx(_shared_file("mnist", "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
  return _split(x, y, _MNIST_TEST, common.SPLIT_SEED)


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
  prefix = "train" if split == "train" else "t10k"
  x = pool28(read_idx(_shared_file("fashion_mnist", f"{prefix}-images-idx3-ubyte.gz")))
  y = read_idx(_shared_file("fashion_mnist", f"{prefix}-labels-idx1-ubyte.gz"))
  return x, y.astype(np.int64)


def fashion_split() -> Split:
  """Fashion-MNIST pooled to 16x16: its own 60,000 / 10,000 split (the benchmark pretrains on
  it; the downstream Fashion tasks use only its test images)."""
  return {"train": _fashion("train"), "test": _fashion("test")}


def mnist_perm_split() -> Split:
  """``mnist`` with a fixed pixel permutation (seed 2)."""
  return {k: (permute_pixels(x, 2), y) for k, (x, y) in mnist_split().items()}


def fashion_perm_split() -> Split:
  """Fashion-MNIST's 10,000 test images (never its train images, which pretraining sees),
  pooled, split 8,000 / 2,000 (stratified) and permuted with a fixed permutation (seed 3)."""
  data = _split(*_fashion("test"), _MNIST_TEST, common.SPLIT_SEED)
  return {k: (permute_pixels(x, 3), y) for k, (x, y) in data.items()}


def mnist_m_split() -> Split:
  """MNIST-M style (Ganin et al. 2016, arXiv 1505.07818): each ``mnist`` digit blended as
  ``|background - digit|`` onto a Fashion-MNIST test image drawn with ``default_rng(4)``
  (train split) / ``default_rng(5)`` (test split)."""
  bg, _ = _fashion("test")
  out = {}
  for i, (k, (x, y)) in enumerate(mnist_split().items()):
    pick = np.random.default_rng(4 + i).integers(0, len(bg), len(x))
    blended = np.abs(bg[pick].astype(np.int16) - x.astype(np.int16)).astype(np.uint8)
    out[k] = (blended, y)
  return out


@dataclasses.dataclass(frozen=True)
class SuiteTask:
  """One suite task: short name, loader, split sizes, whether it needs ../shared/data."""
  name: str
  load: Callable[[], Split]
  sizes: tuple[int, int]
  shared: bool
  description: str


TASKS = (
    SuiteTask("digits", digits_split, (1437, 360), False,
              "sklearn 8x8 digits upsampled 2x to 16x16"),
    SuiteTask("mnist1d", mnist1d_split, (4000, 1000), False,
              "MNIST-1D signals drawn as 16x16 line plots"),
    SuiteTask("multidigits", multidigits_split, (8000, 2000), False,
              "two overlaid sklearn digits on a 16x16 canvas; label = right digit"),
    SuiteTask("digits_perm", digits_perm_split, (1437, 360), False,
              "suite_digits with a fixed pixel permutation"),
    SuiteTask("mnist", mnist_split, (8000, 2000), True,
              "MNIST test images pooled to 16x16, split 8000/2000"),
    SuiteTask("fashion", fashion_split, (60000, 10000), True,
              "Fashion-MNIST pooled to 16x16 (the benchmark's pretraining data)"),
    SuiteTask("mnist_m", mnist_m_split, (8000, 2000), True,
              "MNIST digits blended onto Fashion-MNIST backgrounds (MNIST-M style)"),
    SuiteTask("mnist_perm", mnist_perm_split, (8000, 2000), True,
              "suite_mnist with a fixed pixel permutation"),
    SuiteTask("fashion_perm", fashion_perm_split, (8000, 2000), True,
              "Fashion-MNIST test images split 8000/2000, fixed pixel permutation"),
)
TASK_BY_NAME = {t.name: t for t in TASKS}


def dataset_name(task: str) -> str:
  return f"jaxmtl_suite_{task}"


def _make_builder(task: SuiteTask) -> type:
  """A GeneratorBasedBuilder class for one task (registered with TFDS under its name)."""

  def _info(self) -> tfds.core.DatasetInfo:
    return common.dataset_info(
        self,
        description=f"{task.description}. {__doc__}",
        features={
            "image": tfds.features.Tensor(shape=SHAPE, dtype=np.uint8),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64),
        },
        metadata={"suite_task": task.name, "needs_shared_data": task.shared},
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    data = task.load()
    for split, (x, y) in data.items():
      if x.shape[1:] != SHAPE or x.dtype != np.uint8:
        raise ValueError(f"suite task {task.name!r} split {split!r}: images {x.shape} "
                         f"{x.dtype}, expected [n, {SHAPE}] uint8")
    return {name: self._generate_examples(*arrays) for name, arrays in data.items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": label}

  cls_name = "JaxmtlSuite" + "".join(p.capitalize() for p in task.name.split("_"))
  return type(cls_name, (tfds.core.GeneratorBasedBuilder,), {
      "VERSION": common.VERSION, "__doc__": f"{task.description} (16x16x1 uint8, 10 classes).",
      "__module__": __name__, "_info": _info, "_split_generators": _split_generators,
      "_generate_examples": _generate_examples})


BUILDERS = {dataset_name(t.name): _make_builder(t) for t in TASKS}
