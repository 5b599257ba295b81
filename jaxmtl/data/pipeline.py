"""The data of one run, from its `data` config: spec, train stream and evaluation split.

One place decides what a run reads, so the train loop, the benchmarks and the μP tools all
see the same batches:
  * one dataset (`data.name`): its train split, shuffled with the seed, repeated forever;
  * a mixture (`data.mixture`): every global batch mixes the datasets' examples in the
    configured proportions (`mixture.mixed_dataset`); evaluation runs over every member's
    eval split, each task scored on its own dataset's examples.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxmtl import tasks as tasks_lib
from jaxmtl.data import mixture as mixture_lib
from jaxmtl.data.batches import BatchIterator
from jaxmtl.data.sources import get_source


@dataclasses.dataclass(frozen=True)
class RunData:
  """spec: the run's DataSpec; train/eval: what `BatchIterator` reads; train_size: examples
  per epoch (all members for a mixture); probabilities: {dataset: p} of a mixture, else None."""
  spec: tasks_lib.DataSpec
  train: Any
  eval: Any
  train_size: int
  probabilities: dict[str, float] | None
  seed: int

  @property
  def is_mixture(self) -> bool:
    return self.probabilities is not None


def run_data(data_cfg: Any, seed: int) -> RunData:
  """Builds the RunData of a `DataConfig` (`seed` unless `data.shuffle_buffer_seed` is set)."""
  seed = seed if data_cfg.shuffle_buffer_seed is None else data_cfg.shuffle_buffer_seed
  if not data_cfg.mixture:
    spec = tasks_lib.data_spec(data_cfg.name, data_cfg.data_dir, data_cfg.tasks)
    train = get_source(data_cfg.name, "train", data_cfg.data_dir)
    return RunData(spec, train, get_source(data_cfg.name, data_cfg.eval_split,
                                           data_cfg.data_dir), len(train), None, seed)
  spec, members = tasks_lib.mixture_spec(data_cfg.mixture, data_cfg.data_dir, data_cfg.tasks)
  trains = [get_source(m.name, "train", data_cfg.data_dir) for m in members]
  evals = [get_source(m.name, data_cfg.eval_split, data_cfg.data_dir) for m in members]
  transforms = [mixture_lib.example_transform(m, spec) for m in members]
  probs = mixture_lib.mixture_probabilities(
      {m.name: len(src) for m, src in zip(members, trains)}, data_cfg.mixture_mode,
      data_cfg.mixture_temperature)
  train = mixture_lib.mixed_dataset(trains, transforms, list(probs.values()), seed)
  return RunData(spec, train, mixture_lib.concatenated_dataset(evals, transforms),
                 sum(len(s) for s in trains), probs, seed)


def train_iterator(data: RunData, global_batch_size: int, mesh: jax.sharding.Mesh
                   ) -> BatchIterator:
  """The endless, checkpointable iterator of global train batches on `mesh`."""
  if data.is_mixture:  # already shuffled per member and endless
    return BatchIterator(data.train, global_batch_size=global_batch_size, mesh=mesh,
                         shuffle=False, num_epochs=None, seed=data.seed)
  return BatchIterator(data.train, global_batch_size=global_batch_size, mesh=mesh,
                       seed=data.seed)
