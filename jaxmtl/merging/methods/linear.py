"""Linear merges: weight averaging and task arithmetic.

* Weight averaging ("model soups"; Wortsman et al., "Model soups: averaging weights of multiple
  fine-tuned models improves accuracy without increasing inference time", arXiv 2203.05482;
  FusionBench ``SimpleAverageAlgorithm`` / ``WeightedAverageAlgorithm``).
* Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", arXiv 2212.04089;
  reference ``mlfoundations/task_vectors`` and FusionBench ``TaskArithmeticAlgorithm``):
  ``theta = theta_0 + lambda * sum_t tau_t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxmtl.merging.methods import _common
from jaxmtl.merging.task_vectors import Exclude

PyTree = Any

__all__ = ["weight_average", "task_arithmetic"]


def weight_average(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
                   task_vectors: Sequence[PyTree] | None = None,
                   weights: Sequence[float] | jax.Array | None = None,
                   exclude: Exclude = None) -> PyTree:
  """(Weighted) average of the finetuned models: ``theta_0 + sum_t w_t tau_t / sum_t w_t``.

  Args:
    pretrained: pytree ``theta_0`` (only used as the base and for excluded leaves).
    finetuned: ``T`` pytrees ``theta_t`` shaped like ``pretrained`` (or ``task_vectors=``).
    weights: ``[T]`` non-negative weights, normalised to sum 1 (FusionBench
      ``WeightedAverageAlgorithm(normalize=True)``); None means uniform (``SimpleAverage``).
    exclude: path regex(es) of leaves returned from ``pretrained`` unchanged.

  Returns:
    pytree with ``pretrained``'s structure, shapes and dtypes.
  """
  if weights is not None:
    weights = jnp.asarray(weights, jnp.float32)
  return _weight_average(pretrained, finetuned, task_vectors, weights,
                         exclude=_common.freeze(exclude))


@_common.jit_static()
def _weight_average(pretrained, finetuned, task_vectors, weights, *, exclude):
  prep = _common.prepare(pretrained, finetuned, task_vectors, exclude, "weight_average")
  if weights is None:
    w = jnp.full((prep.num_tasks,), 1.0 / prep.num_tasks, jnp.float32)
  else:
    w = weights
    if w.shape != (prep.num_tasks,):
      raise ValueError(f"weight_average: weights must have shape ({prep.num_tasks},), "
                       f"got {w.shape}")
    w = w / jnp.sum(w)

  def fn(s):
    return jnp.tensordot(w.astype(s.dtype), s, axes=1)

  return _common.finish(prep, _common.map_merged(prep, fn))


def task_arithmetic(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
                    task_vectors: Sequence[PyTree] | None = None,
                    scaling: float | jax.Array = 0.3,
                    exclude: Exclude = None) -> PyTree:
  """Task arithmetic: ``theta_0 + scaling * sum_t tau_t`` (leaf-wise, ``[*s]``).

  ``scaling`` is the paper's lambda, chosen on held-out validation data from
  ``{0, 0.05, ..., 1}`` in the paper; the default 0.3 is FusionBench's
  ``task_arithmetic.yaml`` ``scaling_factor`` (mergekit's ``task_arithmetic`` uses weights 1 and
  lambda 1, i.e. ``scaling=1``). ``scaling`` may be a traced scalar (linear in it).
  """
  return _task_arithmetic(pretrained, finetuned, task_vectors, scaling,
                          exclude=_common.freeze(exclude))


@_common.jit_static()
def _task_arithmetic(pretrained, finetuned, task_vectors, scaling, *, exclude):
  prep = _common.prepare(pretrained, finetuned, task_vectors, exclude, "task_arithmetic")
  return _common.finish(prep, _common.map_merged(prep, lambda s: jnp.sum(s, axis=0)), scaling)
