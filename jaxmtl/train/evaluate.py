"""Exact evaluation over a whole split (padded last batch, masked)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmtl import tasks as tasks_lib
from jaxmtl.data.batches import MASK_KEY, BatchIterator


def make_evaluator(eval_step: Callable, spec: tasks_lib.DataSpec, source: Any, mesh,
                   batch_size: int, param_shardings: Any) -> Callable[[Any], dict[str, float]]:
  """Returns evaluate(params) -> {"<task>/loss", "<task>/accuracy", ...} on the split."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  batch_size = max(shards, batch_size - batch_size % shards)
  jitted = jax.jit(eval_step, in_shardings=(param_shardings, None, None))

  def evaluate(params) -> dict[str, float]:
    it = BatchIterator(source, global_batch_size=batch_size, mesh=mesh, shuffle=False,
                       num_epochs=1, drop_remainder=False)
    totals = None
    for batch in it:
      mask = batch.pop(MASK_KEY)
      stats = jitted(params, batch, mask)
      totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
    return tasks_lib.summarize(spec.tasks, jax.device_get(totals))
  return evaluate
