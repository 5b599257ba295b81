"""The pure train step: (state, batch) -> (state, metrics), and the eval step.

`make_train_step` closes over static things only (graphdef, data spec,
optimizer, loss combination); it is jitted once by the loop with explicit
in/out shardings and the state donated.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxmtl import tasks as tasks_lib
from jaxmtl.train.state import TrainState

# combine(losses_T, mtl_state, step, key) -> (total_loss, weights_T, new_mtl_state)
Combine = Callable[[jax.Array, Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array, Any]]


def sum_combine(mean: bool = False) -> tuple[Callable[[], Any], Combine]:
  """Equal weights: the plain sum of task losses (or their mean)."""
  def combine(losses, state, step, key):
    w = jnp.full_like(losses, 1.0 / losses.shape[0] if mean else 1.0)
    return jnp.sum(w * losses), w, state
  return (lambda: ()), combine


def make_loss_fn(graphdef: nnx.GraphDef, spec: tasks_lib.DataSpec):
  """loss_fn(params, batch) -> (losses f32[T], stats) with one forward pass."""
  def loss_fn(params, batch: Mapping[str, jax.Array], mask=None):
    model = nnx.merge(graphdef, params)
    x, labels = tasks_lib.prepare_batch(spec, batch)
    logits = model(x)
    return tasks_lib.task_losses(spec.tasks, logits, labels, mask)
  return loss_fn


def _rms(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  sq = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
  n = sum(x.size for x in leaves)
  return jnp.sqrt(sq / n)


def make_train_step(graphdef: nnx.GraphDef, spec: tasks_lib.DataSpec,
                    optimizer: optax.GradientTransformation, combine: Combine):
  """Returns step(state, batch) -> (state, metrics). Pure; no host interaction."""
  loss_fn = make_loss_fn(graphdef, spec)
  names = [t.name for t in spec.tasks]

  def step(state: TrainState, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def total_loss(params, mtl_state):
      losses, stats = loss_fn(params, batch)
      total, weights, new_mtl = combine(losses, mtl_state, state.step, key)
      return total, (losses, weights, new_mtl, stats)

    grads, (losses, weights, mtl_state, stats) = jax.grad(total_loss, has_aux=True)(
        state.params, state.mtl_state)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": jnp.sum(weights * losses), "grad_norm": optax.tree.norm(grads),
               "param_rms": _rms(params), "update_rms": _rms(updates)}
    for i, n in enumerate(names):
      metrics[f"loss/{n}"] = losses[i]
      metrics[f"weight/{n}"] = weights[i]
      metrics[f"train_accuracy/{n}"] = stats[f"{n}/correct"] / jnp.maximum(stats[f"{n}/count"], 1)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              mtl_state=mtl_state)
    return new_state, metrics

  return step


def make_eval_step(graphdef: nnx.GraphDef, spec: tasks_lib.DataSpec):
  """eval_step(params, batch, mask) -> per-task sums (loss, correct, count)."""
  loss_fn = make_loss_fn(graphdef, spec)

  def eval_step(params, batch, mask):
    _, stats = loss_fn(params, batch, mask)
    return stats
  return eval_step
