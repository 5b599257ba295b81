"""Global batches on a jax Mesh from a random-access source, each process reading its part.

The example stream is a `grain.MapDataset`: the source, shuffled with an explicit seed
(`index_shuffle`, reseeded every epoch), repeated `num_epochs` times (None: forever), and an
optional per-example `transform`. Global batch `i` is stream positions
`[i * G, (i + 1) * G)` (G = global batch size); process `p` of `P` reads only rows
`[p * G/P, (p + 1) * G/P)` of it — local batch `i * P + p` of the stream batched by `G/P` —
and the rows are assembled into one `jax.Array` per key with
`jax.make_array_from_process_local_data`, sharded `P(batch_axes)` on the leading axis. So the
global order depends on the seed and the step only, never on the number of processes, and
the iterator state is just the step (levanter-style determinism): restore it and the next
batch is identical, on any number of processes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import math
import sys
from typing import Any

import grain
import jax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

MASK_KEY = "mask"


def as_dataset(source: Sequence[Any] | grain.MapDataset) -> grain.MapDataset:
  """A random-access source (e.g. `tfds.data_source`) or a `grain.MapDataset` as a MapDataset."""
  return source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)


def local_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """Rows of each global batch that process `process_index` of `process_count` reads."""
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"the process count {process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
  size = global_batch_size // process_count
  return slice(process_index * size, (process_index + 1) * size)


def _pad(batch: dict[str, np.ndarray] | None, template: dict[str, np.ndarray], size: int):
  """Pads a (possibly absent) local batch with zeros to `size` rows and adds a bool mask."""
  n = 0 if batch is None else len(next(iter(batch.values())))
  out = {}
  for key, ref in template.items():
    padded = np.zeros((size,) + ref.shape[1:], dtype=ref.dtype)
    if n:
      padded[:n] = batch[key]
    out[key] = padded
  out[MASK_KEY] = np.arange(size) < n
  return out


class BatchIterator(Iterator[dict[str, jax.Array]]):
  """Yields {key: jax.Array [global_batch_size, ...]} sharded over `batch_axes` of `mesh`.

  `source` is a random-access source or a `grain.MapDataset` (e.g. an endless
  `mixture.mixed_dataset`, used with `shuffle=False, num_epochs=None`).

  With `drop_remainder=False` the last global batch is padded with zeros and every batch
  carries `mask` (bool [global_batch_size]), True on real examples (use it for exact
  evaluation). State: `get_state()` -> JSON dict, `set_state(state)`.
  """

  def __init__(self, source: Sequence[Any], *, global_batch_size: int, mesh: jax.sharding.Mesh,
               batch_axes: str | tuple[str, ...] = ("data", "fsdp"), seed: int = 0,
               shuffle: bool = True, num_epochs: int | None = None,
               drop_remainder: bool = True,
               transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
               process_index: int | None = None, process_count: int | None = None):
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown:
      raise ValueError(f"batch_axes {unknown} not in the mesh axes {mesh.axis_names}.")
    shards = math.prod(mesh.shape[a] for a in axes)
    if global_batch_size <= 0 or global_batch_size % shards:
      raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                       f"{shards} (the size of mesh axes {axes}).")
    if num_epochs is not None and num_epochs <= 0:
      raise ValueError(f"num_epochs must be a positive int or None, got {num_epochs!r}.")
    if len(source) == 0:
      raise ValueError("source is empty.")
    self._process_index = jax.process_index() if process_index is None else process_index
    self._process_count = jax.process_count() if process_count is None else process_count
    rows = local_rows(global_batch_size, self._process_index, self._process_count)
    self._local_size = rows.stop - rows.start
    self._global_size = global_batch_size
    self._sharding = NamedSharding(mesh, PartitionSpec(axes))
    self._seed, self._shuffle, self._num_epochs = int(seed), bool(shuffle), num_epochs
    self._drop_remainder = drop_remainder
    # A random-access source with a bulk read (TFDS's ArrayRecord source): run the pipeline
    # over example *indices* and read each local batch with one `__getitems__` call, which is
    # ~3x faster than grain's per-example reads; the order is identical (shuffle permutes
    # indices either way).
    self._bulk = (source if not isinstance(source, grain.MapDataset)
                  and hasattr(source, "__getitems__") else None)
    self._transform = transform
    ds = grain.MapDataset.range(len(source)) if self._bulk is not None else as_dataset(source)
    if shuffle:
      ds = ds.seed(self._seed).shuffle()
    if num_epochs is not None or len(ds) < sys.maxsize:  # an endless stream stays as it is
      ds = ds.repeat(num_epochs)
    if transform is not None and self._bulk is None:
      ds = ds.map(transform)
    if num_epochs is None:
      self._num_batches = None
    elif drop_remainder:
      self._num_batches = len(ds) // global_batch_size
      ds = ds[: self._num_batches * global_batch_size]
    else:
      self._num_batches = -(-len(ds) // global_batch_size)
    self._local = ds.batch(self._local_size, drop_remainder=False)
    self._template = self._read(0)
    if not drop_remainder and MASK_KEY in self._template:
      raise ValueError(f"Examples already have a {MASK_KEY!r} key; it is reserved for padding.")
    self._step = 0

  @property
  def num_batches(self) -> int | None:
    """Global batches per pass (None when repeating forever)."""
    return self._num_batches

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`, as numpy arrays."""
    k = step * self._process_count + self._process_index
    batch = self._read(k) if k < len(self._local) else None
    if self._drop_remainder:
      return batch
    return _pad(batch, self._template, self._local_size)

  def _read(self, k: int) -> dict[str, np.ndarray]:
    """Local batch `k` of the stream as {key: [rows, ...]}."""
    if self._bulk is None:
      return self._local[k]
    rows = self._bulk.__getitems__([int(i) for i in self._local[k]])
    if self._transform is not None:
      rows = [self._transform(r) for r in rows]
    return {key: np.stack([np.asarray(r[key]) for r in rows]) for key in rows[0]}

  def _global(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {
        key: jax.make_array_from_process_local_data(
            self._sharding, value, (self._global_size,) + value.shape[1:])
        for key, value in local.items()
    }

  def peek(self) -> dict[str, jax.Array]:
    """The next batch, without advancing."""
    if self._num_batches is not None and self._step >= self._num_batches:
      raise StopIteration
    return self._global(self.local_batch(self._step))

  def __next__(self) -> dict[str, jax.Array]:
    batch = self.peek()
    self._step += 1
    return batch

  def __iter__(self):
    return self

  @property
  def element_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    local = self.local_batch(0)
    return {key: jax.ShapeDtypeStruct((self._global_size,) + v.shape[1:],
                                      jax.dtypes.canonicalize_dtype(v.dtype),
                                      sharding=self._sharding) for key, v in local.items()}

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable state; the data is a function of `step` and the fixed settings."""
    return {"step": self._step, "seed": self._seed, "shuffle": self._shuffle,
            "global_batch_size": self._global_size, "num_epochs": self._num_epochs}

  def set_state(self, state: dict[str, Any]) -> None:
    for key, mine in self.get_state().items():
      if key != "step" and key in state and state[key] != mine:
        raise ValueError(f"Iterator state has {key}={state[key]!r} but this iterator was "
                         f"built with {key}={mine!r}.")
    step = state.get("step")
    if not isinstance(step, int) or step < 0:
      raise ValueError(f"state['step'] must be a non-negative int, got {step!r}.")
    self._step = step


def iterate_numpy(source: Sequence[Any], batch_size: int,
                  transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Whole split in order, numpy batches of exactly `batch_size` rows plus `mask` (bool).

  The last partial batch is zero-padded; `mask` is False on the padding, so metrics summed
  with the mask are exact over the full split.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size!r}.")
  ds = as_dataset(source)
  if transform is not None:
    ds = ds.map(transform)
  ds = ds.batch(batch_size, drop_remainder=False)
  template = ds[0]
  if MASK_KEY in template:
    raise ValueError(f"Examples already have a {MASK_KEY!r} key; it is reserved for padding.")
  for i in range(len(ds)):
    yield _pad(ds[i], template, batch_size)
