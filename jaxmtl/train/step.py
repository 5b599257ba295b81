"""The pure train step: (state, batch) -> (state, metrics), and the eval step.

`make_train_step` closes over static things only (graphdef, data spec,
optimizer, loss combination); it is jitted once by the loop with explicit
in/out shardings and the state donated.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxmtl import tasks as tasks_lib
from jaxmtl.train.combine import MTLMethod
from jaxmtl.train.state import TrainState

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


class FeatureFns(NamedTuple):
  """The model split into encoder and heads, for representation-level and tapped MTL modes.

  prepare(batch) -> (x, labels); encode(params, x) -> z; head_loss(params, z, labels) ->
  (losses f32[T], stats); task_head_loss(params, z, labels, i) -> task i's loss, head i only
  (its gradient costs one head backward: XLA drops the other heads' dead forward);
  for the ghost Gramian mode (`jaxmtl.mtl.ghost`; models with `encode_tapped`/`tap_paths`,
  e.g. `models.MLP`): taps(params, x) -> [(param path, (N, fan_out), multiplier, has_bias)]
  per tapped Dense layer in call order, and encode_tapped(params, x, deltas) -> (z, [layer
  input rows]) with `deltas[i]` added to layer i's output.
  """
  prepare: Callable
  encode: Callable
  head_loss: Callable
  task_head_loss: Callable
  taps: Callable
  encode_tapped: Callable


def make_features_fns(graphdef: nnx.GraphDef, spec: tasks_lib.DataSpec) -> FeatureFns:
  """The `FeatureFns` of a model given by its graphdef."""
  def prepare(batch):
    return tasks_lib.prepare_batch(spec, batch)

  def encode(params, x):
    return nnx.merge(graphdef, params).encode(x)

  def head_loss(params, z, labels):
    logits = nnx.merge(graphdef, params).heads(z)
    return tasks_lib.task_losses(spec.tasks, logits, labels)

  def task_head_loss(params, z, labels, i):
    task = spec.tasks[i]
    logits = nnx.merge(graphdef, params).heads(z)[task.name]
    return tasks_lib.task_losses([task], {task.name: logits}, labels)[0][0]

  def tapped_model(params):
    model = nnx.merge(graphdef, params)
    if not (hasattr(model, "encode_tapped") and hasattr(model, "tap_paths")):
      raise ValueError(
        f"mtl.jacobian='ghost' needs a model whose encoder taps its Dense layers "
        f"(encode_tapped/tap_paths, e.g. models.MLP); {type(model).__name__} has none: use "
        "mtl.jacobian 'full', 'chunked' or 'gramian'")
    return model

  def layer(model, path):
    for k in path:
      model = model[k] if isinstance(k, int) else getattr(model, k)
    return model

  def taps(params, x):
    model = tapped_model(params)
    out = []
    for p in model.tap_paths():
      dense = layer(model, p)
      out.append((tuple(p), (x.shape[0], dense.kernel.shape[1]), float(dense.multiplier),
                  dense.bias is not None))
    return out

  def encode_tapped(params, x, deltas):
    return tapped_model(params).encode_tapped(x, deltas)
  return FeatureFns(prepare, encode, head_loss, task_head_loss, taps, encode_tapped)


def make_train_step(graphdef: nnx.GraphDef, spec: tasks_lib.DataSpec,
                    optimizer: optax.GradientTransformation, mtl: MTLMethod,
                    stats_every: int = 1, total_steps: int | None = None,
                    update_rms: bool = True):
  """Returns step(state, batch) -> (state, metrics). Pure; no host interaction.

  `grad_norm` and `param_rms` each read every parameter once more, so with `stats_every > 1`
  they are computed only on the steps the loop logs (new step number a multiple of
  `stats_every`, or `total_steps`; a `lax.cond` whose operands exist anyway) and are NaN on
  the others. `update_rms` (RMS of the optimizer update) is computed when `update_rms`: it
  makes XLA write the update out rather than fuse it into the parameter update (~6% of a small
  model's CPU step). Losses, weights and accuracies are computed every step.
  """
  names = [t.name for t in spec.tasks]
  if isinstance(stats_every, bool) or not isinstance(stats_every, int) or stats_every < 1:
    raise ValueError(f"stats_every must be a positive int, got {stats_every!r}")
  nan = lambda: jnp.full((), jnp.nan, jnp.float32)

  def param_stats(grads, params):
    return optax.tree.norm(grads).astype(jnp.float32), _rms(params)

  def due(step):
    """Whether the step that produces `step + 1` is logged."""
    new_step = step + 1
    out = new_step % stats_every == 0
    return out if total_steps is None else out | (new_step == total_steps)

  def step(state: TrainState, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grads, losses, weights, mtl_state, stats = mtl.grads(state.params, batch, state.mtl_state,
                                                         state.step, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    mtl_state = mtl.after_step(params, batch, mtl_state)
    if stats_every == 1:
      g_norm, p_rms = param_stats(grads, params)
    else:
      g_norm, p_rms = jax.lax.cond(due(state.step), param_stats, lambda g, p: (nan(), nan()),
                                   grads, params)
    metrics = {"loss": jnp.sum(losses), "grad_norm": g_norm, "param_rms": p_rms}
    if update_rms:
      metrics["update_rms"] = _rms(updates)
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
