"""Multi-task methods inside the jitted train step: from per-task losses to one gradient.

`make_mtl(cfg, ...)` returns an `MTLMethod` with
  init() -> mtl state (pytree of arrays; lives in the TrainState, checkpointed);
  grads(params, batch, state, step, key) -> (grads, losses_T, weights_T, new_state, stats);
  after_step(new_params, batch, state) -> state   (FAMO's logit update; identity otherwise).

Three families (docs/mtl.md):
  * loss weighting (`mtl.weighting`: sum, mean, uw, dwa, rlw, gradnorm, famo): one backward of
    the weighted loss; trainable weighting parameters (UW log-variances, GradNorm logits) get
    their own Adam (`mtl.weighting_lr`).
  * gradient aggregation on the shared parameters (`mtl.aggregator`, `mtl.mode="params"`):
    per-task gradients of the shared parameters (everything but `heads`), as a pytree Jacobian
    (`mtl.jacobian="full"`, or "chunked" with `mtl.chunk_size`) or Gramian-only
    (`mtl.jacobian="gramian"`: memory O(params), one extra backward); heads get their own
    task's gradient. Under data parallelism the Jacobian is of the global-batch losses, so
    the Gramian comes from globally reduced per-task gradients.
  * representation level (`mtl.mode="features"`, MGDA-UB, arXiv 1810.04650 Sec. 3.3): the
    Gramian of per-task gradients w.r.t. the shared features z = encode(x); one forward, T
    cheap head backwards, one encoder backward of sum_t w_t dL_t/dz.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmtl.mtl import aggregators as agg_lib
from jaxmtl.mtl import jacobian as jac_lib
from jaxmtl.mtl import weighting as w_lib

HEADS = "heads"


@dataclasses.dataclass(frozen=True)
class MTLConfig:
  """How per-task losses become one update. `options` go to the weighting/aggregator."""
  weighting: str = "sum"
  aggregator: str = ""
  mode: Literal["params", "features"] = "params"
  jacobian: Literal["full", "chunked", "gramian"] = "full"
  chunk_size: int = 1
  weighting_lr: float = 1e-3
  options: Any = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    valid_w = sorted(set(w_lib.WEIGHTINGS) | {"sum", "mean"})
    if self.weighting not in valid_w:
      raise ValueError(f"invalid weighting {self.weighting!r}; valid choices: {valid_w}")
    valid_a = [""] + sorted(agg_lib.AGGREGATORS)
    if self.aggregator not in valid_a:
      raise ValueError(f"invalid aggregator {self.aggregator!r}; valid choices: {valid_a}")
    if self.aggregator and self.weighting not in ("sum", "mean"):
      raise ValueError("choose either a loss weighting or a gradient aggregator, not both "
                       f"(weighting={self.weighting!r}, aggregator={self.aggregator!r})")


class MTLMethod(NamedTuple):
  init: Callable[[], Any]
  grads: Callable[..., tuple]
  after_step: Callable[..., Any]


def split_heads(params: dict) -> tuple[dict, dict]:
  """(shared params, task-head params): heads live under the top-level key "heads"."""
  if HEADS not in params:
    raise ValueError(f"parameters have no top-level {HEADS!r} entry; keys: {sorted(params)}")
  return {k: v for k, v in params.items() if k != HEADS}, params[HEADS]


def _identity(new_params, batch, state):
  return state


def make_mtl(cfg: MTLConfig, num_tasks: int, loss_fn, features_fns=None,
             steps_per_epoch: int | None = None) -> MTLMethod:
  """Builds the method. `loss_fn(params, batch) -> (losses_T, stats)`;
  `features_fns = (prepare(batch) -> (x, labels), encode(params, x) -> z,
  head_loss(params, z, labels) -> (losses_T, stats))` for `mode="features"`."""
  if cfg.aggregator:
    agg = agg_lib.make_aggregator(cfg.aggregator, **dict(cfg.options))
    if cfg.mode == "features":
      return _features(agg, num_tasks, features_fns)
    return _aggregate(cfg, agg, num_tasks, loss_fn)
  if cfg.weighting == "gradnorm":
    return _gradnorm(cfg, num_tasks, loss_fn)
  name = "equal" if cfg.weighting in ("sum", "mean") else cfg.weighting
  opts = {"reduction": cfg.weighting} if name == "equal" else dict(cfg.options)
  if name == "dwa" and opts.get("window", "epoch") == "epoch":
    opts.setdefault("steps_per_epoch", steps_per_epoch)  # LibMTL: epoch-mean losses
  return _weighting(w_lib.make_weighting(name, **opts), cfg, num_tasks, loss_fn)


def _weighting(w, cfg: MTLConfig, num_tasks: int, loss_fn, extras_fn=None) -> MTLMethod:
  """Loss-based weighting: grad of the weighted total w.r.t. (model params, weighting params)."""
  opt = optax.adam(cfg.weighting_lr)

  def init():
    ws = w.init(num_tasks, key=jax.random.key(0))
    return {"w": ws, "opt": opt.init(ws.params)}

  def grads(params, batch, state, step, key):
    ws = state["w"]
    extras = extras_fn(params, batch) if extras_fn else {}

    def total(p, wp):
      losses, stats = loss_fn(p, batch)
      tot, aux = w.update(losses, wp, ws.state, step=step, key=key, **extras)
      return tot, (losses, aux, stats)

    (gp, gw), (losses, aux, stats) = jax.grad(total, argnums=(0, 1), has_aux=True)(
        params, ws.params)
    upd, opt_state = opt.update(gw, state["opt"], ws.params)
    new = {"w": w_lib.WeightingState(optax.apply_updates(ws.params, upd), aux.state),
           "opt": opt_state}
    return gp, losses, aux.weights, new, stats

  def after_step(new_params, batch, state):
    losses_after, _ = loss_fn(new_params, batch)
    ws = state["w"]
    return {**state, "w": ws._replace(state=w.after_step(jax.lax.stop_gradient(losses_after),
                                                          ws.state))}

  return MTLMethod(init, grads, after_step if cfg.weighting == "famo" else _identity)


def _gradnorm(cfg: MTLConfig, num_tasks: int, loss_fn) -> MTLMethod:
  """GradNorm needs ||grad of each task loss w.r.t. the shared parameters|| (LibMTL)."""
  def norms(params, batch):
    shared, heads = split_heads(params)
    fn = lambda s, b: loss_fn({**s, HEADS: heads}, b)
    _, g, _ = jac_lib.task_gramian(fn, shared, batch, chunk_size=cfg.chunk_size)
    return {"grad_norms": jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))}
  w = w_lib.make_weighting("gradnorm", **dict(cfg.options))
  return _weighting(w, cfg, num_tasks, loss_fn, extras_fn=norms)


def _aggregate(cfg: MTLConfig, agg, num_tasks: int, loss_fn) -> MTLMethod:
  """Gradient aggregation of the shared parameters' per-task gradients."""
  if cfg.jacobian == "gramian" and type(agg) in (agg_lib.PCGrad, agg_lib.GradDrop):
    raise ValueError(f"aggregator {cfg.aggregator!r} needs the full Jacobian; "
                     "use mtl.jacobian='full' or 'chunked'")

  def init():
    return {"agg": agg.init(num_tasks)} if agg.stateful else {}

  def grads(params, batch, state, step, key):
    shared, heads = split_heads(params)
    fn = lambda s, b: loss_fn({**s, HEADS: heads}, b)
    agg_state = state.get("agg")
    if cfg.jacobian == "gramian":
      losses, g, stats, combine = jac_lib.task_gramian(fn, shared, batch,
                                                       chunk_size=cfg.chunk_size,
                                                       return_combine=True)
      weights, agg_state = agg.weights(g, state=agg_state, key=key)
      update = combine(weights)
    else:
      chunk = cfg.chunk_size if cfg.jacobian == "chunked" else None
      losses, jac, stats = jac_lib.task_jacobian(fn, shared, batch, chunk_size=chunk)
      update, weights, agg_state = agg(jac, state=agg_state, key=key)
    # Each head only sees its own task's loss: its gradient is that task's gradient.
    head_grads = jax.grad(lambda h: jnp.sum(loss_fn({**shared, HEADS: h}, batch)[0]))(heads)
    new_state = {"agg": agg_state} if agg.stateful else {}
    weights = jnp.zeros((num_tasks,)) if weights is None else weights
    return {**update, HEADS: head_grads}, losses, weights, new_state, stats

  return MTLMethod(init, grads, _identity)


def _features(agg, num_tasks: int, features_fns) -> MTLMethod:
  """Representation-level aggregation (MGDA-UB style) on dL_t/dz."""
  if features_fns is None:
    raise ValueError("mtl.mode='features' needs a model with encode() and heads()")
  prepare, encode, head_loss = features_fns

  def init():
    return {"agg": agg.init(num_tasks)} if agg.stateful else {}

  def grads(params, batch, state, step, key):
    shared, heads = split_heads(params)
    x, labels = prepare(batch)
    z, enc_vjp = jax.vjp(lambda s: encode({**s, HEADS: heads}, x), shared)
    losses, head_vjp, stats = jax.vjp(lambda h, zz: head_loss({**shared, HEADS: h}, zz, labels),
                                      heads, z, has_aux=True)
    eye = jnp.eye(num_tasks, dtype=losses.dtype)
    zgrads = jax.vmap(lambda e: head_vjp(e)[1])(eye)                  # [T, *z.shape]
    weights, agg_state = agg.weights(agg_lib.gramian(zgrads), state=state.get("agg"), key=key)
    _, z_cot = head_vjp(weights)
    # Heads: each task's own gradient (unweighted), as in the parameter-level mode.
    head_g = jax.grad(lambda h: jnp.sum(head_loss({**shared, HEADS: h}, z, labels)[0]))(heads)
    (shared_g,) = enc_vjp(z_cot)
    new_state = {"agg": agg_state} if agg.stateful else {}
    return {**shared_g, HEADS: head_g}, losses, weights, new_state, stats

  return MTLMethod(init, grads, _identity)
