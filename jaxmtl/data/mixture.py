"""Task mixtures: which task's batch comes next, as a deterministic function of the step.

Sampling probabilities follow the usual multi-task recipes: proportional to dataset size
(p_i ∝ n_i), temperature sampling (p_i ∝ n_i^(1/T), T5's "temperature-scaled mixing",
Raffel et al. 2020, arXiv:1910.10683; T=1 is proportional, T→∞ uniform), or uniform. The
task of step `s` is drawn from `numpy.random.default_rng([seed, s])`, so the schedule depends
on the seed and step only: checkpoint the step (and each task's iterator state) and a
restored run continues identically, on any number of processes.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

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
