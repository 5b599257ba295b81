"""Mixtures of datasets: one model, one head per task, datasets sampled by size or temperature.

Sampling probabilities follow the usual multi-task recipes: proportional to dataset size
(p_i ∝ n_i), temperature sampling (p_i ∝ n_i^(1/T), T5's "temperature-scaled mixing",
Raffel et al. 2020, arXiv:1910.10683; T=1 is proportional, T→∞ uniform), or uniform.

Two ways to use them:
  * `mixed_dataset` (what `data.mixture` in a config uses): every global batch mixes examples
    of all datasets in the given proportions (grain's `MapDataset.mix` over per-dataset
    shuffled, endlessly repeated streams). Each example carries every task's label, -1 where
    its dataset has none, so one jitted step computes every task's loss on its own examples —
    which gradient aggregators need. The stream is a function of the seed and the position,
    so the iterator state is the step.
  * `TaskMixture`: one dataset per step, the task of step `s` drawn from
    `numpy.random.default_rng([seed, s])` (for loops that alternate tasks).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

MODES = ("proportional", "temperature", "uniform")


def mixture_probabilities(sizes: Mapping[str, int], mode: str = "proportional",
                          temperature: float = 1.0) -> dict[str, float]:
  """{task: probability} (float64, sums to 1) from {task: number of examples}."""
  if mode not in MODES:
    raise ValueError(f"Unknown mixture mode {mode!r}; valid modes: {', '.join(MODES)}.")
  if not sizes:
    raise ValueError("sizes is empty: a mixture needs at least one task.")
  n = np.asarray([sizes[k] for k in sizes], dtype=np.float64)
  if np.any(n <= 0):
    raise ValueError(f"Task sizes must be positive, got {dict(sizes)}.")
  if mode == "temperature" and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}.")
  if mode == "uniform":
    weights = np.ones_like(n)
  else:
    exponent = 1.0 / temperature if mode == "temperature" else 1.0
    weights = np.exp(exponent * (np.log(n) - np.log(n).max()))
  return dict(zip(sizes, (weights / weights.sum()).tolist()))


def task_for_step(probabilities: Mapping[str, float], seed: int, step: int) -> str:
  """The task whose batch is used at `step` (pure function of seed and step)."""
  names = list(probabilities)
  rng = np.random.default_rng([int(seed), int(step)])
  return names[rng.choice(len(names), p=np.asarray([probabilities[k] for k in names]))]


class TaskMixture(Iterator[tuple[str, Any]]):
  """Yields (task name, batch), sampling the task per step from `probabilities`.

  `iterators` maps task name to a batch iterator with `get_state`/`set_state` (e.g.
  `jaxmtl.data.batches.BatchIterator`, usually with `num_epochs=None`). State:
  {'step': int, 'seed': int, 'tasks': {name: iterator state}}.
  """

  def __init__(self, iterators: Mapping[str, Any], probabilities: Mapping[str, float], *,
               seed: int):
    if set(iterators) != set(probabilities):
      raise ValueError(f"Tasks of iterators {sorted(iterators)} and probabilities "
                       f"{sorted(probabilities)} differ.")
    self._iterators = dict(iterators)
    self._probabilities = {k: float(probabilities[k]) for k in iterators}
    if abs(sum(self._probabilities.values()) - 1.0) > 1e-6:
      raise ValueError(f"probabilities must sum to 1, got {self._probabilities}.")
    self._seed, self._step = int(seed), 0

  def __iter__(self):
    return self

  def __next__(self) -> tuple[str, Any]:
    task = task_for_step(self._probabilities, self._seed, self._step)
    batch = next(self._iterators[task])
    self._step += 1
    return task, batch

  def get_state(self) -> dict[str, Any]:
    return {"step": self._step, "seed": self._seed,
            "tasks": {k: it.get_state() for k, it in self._iterators.items()}}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if state.get("seed", self._seed) != self._seed:
      raise ValueError(f"Mixture state has seed={state['seed']!r}, this mixture {self._seed}.")
    if set(state.get("tasks", {})) != set(self._iterators):
      raise ValueError(f"Mixture state tasks {sorted(state.get('tasks', {}))} differ from "
                       f"{sorted(self._iterators)}.")
    for name, it in self._iterators.items():
      it.set_state(state["tasks"][name])
    self._step = int(state["step"])


def example_transform(member: Any, mixture: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
  """Raw example of dataset `member` (a DataSpec) -> the mixture's example layout.

  Output: {"inputs": float32 [*input_shape] (scaled like the member's inputs),
  "label_<task>": int64 for every task of `mixture` (-1 for tasks of other datasets)}.
  """
  from jaxmtl.tasks import short_name  # Local import: tasks imports this package lazily.
  prefix = short_name(member.name)
  own = {}
  for t in member.tasks:
    name = prefix if len(member.tasks) == 1 else f"{prefix}_{t.name}"
    own[f"label_{name}"] = t.label_key
  keys = [t.label_key for t in mixture.tasks]
  scale = member.input_scale

  def transform(example: dict[str, Any]) -> dict[str, Any]:
    x = np.asarray(example[member.input_key], np.float32)
    out = {mixture.input_key: x * np.float32(scale) if scale is not None else x}
    for key in keys:
      out[key] = np.int64(example[own[key]]) if key in own else np.int64(-1)
    return out
  return transform


def mixed_dataset(sources: Sequence[Sequence[Any]], transforms: Sequence[Callable],
                  probabilities: Sequence[float], seed: int) -> grain.MapDataset:
  """An endless stream mixing `sources` in `probabilities` (each shuffled with its own seed,
  reshuffled every epoch, then transformed). Position i is a pure function of (seed, i)."""
  if not len(sources) == len(transforms) == len(probabilities):
    raise ValueError("sources, transforms and probabilities must have the same length")
  streams = [grain.MapDataset.source(src).seed(seed * 1_000_003 + i).shuffle().repeat(None)
             .map(tf) for i, (src, tf) in enumerate(zip(sources, transforms))]
  return grain.MapDataset.mix(streams, [float(p) for p in probabilities])


def concatenated_dataset(sources: Sequence[Sequence[Any]],
                         transforms: Sequence[Callable]) -> grain.MapDataset:
  """Every example of every source once, in order (for exact per-task evaluation)."""
  return grain.MapDataset.concatenate([grain.MapDataset.source(src).map(tf)
                                       for src, tf in zip(sources, transforms)])
