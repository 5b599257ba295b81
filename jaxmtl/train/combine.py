"""From per-task losses to one objective: the loss-combination hook of the train step.

`make_combine(cfg, num_tasks)` returns `(init, combine)`:
  init() -> mtl state (a pytree, part of the TrainState, checkpointed);
  combine(losses_T, state, step, key) -> (total_loss, weights_T, new_state).
"""
from __future__ import annotations

from jaxmtl.train.step import sum_combine

COMBINES = ("sum", "mean")


def make_combine(cfg, num_tasks: int):
  if cfg.weighting == "sum":
    return sum_combine(mean=False)
  if cfg.weighting == "mean":
    return sum_combine(mean=True)
  raise ValueError(f"invalid config.mtl.weighting {cfg.weighting!r}; valid choices: {list(COMBINES)}")
