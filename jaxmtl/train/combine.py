"""Multi-task methods inside the jitted train step: from per-task losses to one gradient.

`make_mtl(cfg, ...)` returns an `MTLMethod` with
  init(params) -> mtl state (pytree of arrays; lives in the TrainState, checkpointed);
  grads(params, batch, state, step, key) -> (grads, losses_T, weights_T, new_state, stats);
  after_step(new_params, batch, state) -> state   (FAMO's logit update; identity otherwise).

The families (docs/mtl.md, docs/mtl_weighting.md):
  * loss weighting (`mtl.weighting`: sum, mean, uw, dwa, rlw, famo): one backward of the
    weighted loss; trainable weighting parameters (UW log-variances) get their own Adam
    (`mtl.weighting_lr`).
  * GradNorm (`mtl.weighting="gradnorm"`): needs ||grad L_i|| w.r.t. the shared parameters
    (`mtl.mode="params"`, LibMTL's default; per-task gradients as in the Jacobian modes) or
    w.r.t. the shared features (`mtl.mode="features"`, LibMTL's `rep_grad`); the model gets
    sum_i w_i grad L_i from the same backward passes.
  * DB-MTL (`mtl.weighting="db_mtl"`): per-task gradients of the shared parameters
    (`mtl.jacobian` "full" or "chunked"), an EMA buffer of shape [T, shared params] in the
    state; heads get the gradient of sum_i log(L_i + eps).
  * gradient aggregation on the shared parameters (`mtl.aggregator`, `mtl.mode="params"`):
    per-task gradients of the shared parameters (everything but `heads`), as a pytree Jacobian
    (`mtl.jacobian="full"`, or "chunked" with `mtl.chunk_size`) or Gramian-only
    (`mtl.jacobian="gramian"`: memory O(params), one extra backward), or, for models of
    dense layers, the ghost Gramian (`mtl.jacobian="ghost"`, `mtl/ghost.py`: from each layer's
    inputs and output cotangents, no per-task weight gradients). One forward; each
    task's backward runs through its own head and the encoder, so each head's gradient (its
    own task's) comes out of the same passes: no second forward/backward. Under data
    parallelism the Jacobian is of the global-batch losses, so the Gramian comes from
    globally reduced per-task gradients.
  * representation level (`mtl.mode="features"`, MGDA-UB, arXiv 1810.04650 Sec. 3.3): the
    Gramian of per-task gradients w.r.t. the shared features z = encode(x); one forward, T
    cheap head backwards, one encoder backward of sum_t w_t dL_t/dz. GradDrop, element-wise,
    acts on dL_t/dz directly (as its paper applies it to activations, arXiv 2010.06808).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmtl.mtl import aggregators as agg_lib
from jaxmtl.mtl import ghost as ghost_lib
from jaxmtl.mtl import jacobian as jac_lib
from jaxmtl.mtl import weighting as w_lib

HEADS = "heads"
sg = jax.lax.stop_gradient

_JACOBIANS = ("full", "chunked", "gramian", "ghost")

# Loss weightings that need no per-task gradients: one backward of the weighted total.
_PLAIN_WEIGHTINGS = ("sum", "mean", "equal", "uw", "dwa", "rlw", "famo")


@dataclasses.dataclass(frozen=True)
class MTLConfig:
  """How per-task losses become one update. `options` go to the weighting/aggregator.

  Valid combinations (anything else raises naming the keys):
    * `weighting` in sum/mean/equal/uw/dwa/rlw/famo: `mode="params"`, `jacobian` unused;
    * `weighting="gradnorm"`: `mode` "params" (`jacobian` "full": stores J; "chunked" /
      "gramian": `chunk_size` tasks at a time, one extra backward) or "features";
    * `weighting="db_mtl"`: `mode="params"`, `jacobian` "full" or "chunked";
    * `aggregator`: `mode` "params" (`jacobian` full/chunked/gramian/ghost; GradDrop is
      element-wise and needs the Jacobian) or "features";
    * `jacobian="ghost"` (aggregators and gradnorm, `mode="params"`): models whose shared
      parameters all sit in tapped Dense layers (`models.MLP`).
  """
  weighting: str = "sum"
  aggregator: str = ""
  mode: Literal["params", "features"] = "params"
  jacobian: Literal["full", "chunked", "gramian", "ghost"] = "full"
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
    if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or (
        self.chunk_size < 1):
      raise ValueError(f"chunk_size must be a positive int, got {self.chunk_size!r}")
    method = self.aggregator or self.weighting
    if self.mode == "features" and not self.aggregator and self.weighting != "gradnorm":
      raise ValueError(f"mode='features' applies to gradient aggregators and gradnorm, not to "
                       f"weighting={self.weighting!r}; use mode='params'")
    if self.jacobian not in _JACOBIANS:
      raise ValueError(f"invalid jacobian {self.jacobian!r}; valid choices: {list(_JACOBIANS)}")
    if self.jacobian == "ghost" and (self.mode != "params" or not (
        self.aggregator or self.weighting == "gradnorm")):
      raise ValueError("jacobian='ghost' (Gramian from the dense layers' inputs and output "
                       "cotangents) applies to gradient aggregators and gradnorm with "
                       f"mode='params' (got mode={self.mode!r}, aggregator={self.aggregator!r}, "
                       f"weighting={self.weighting!r})")
    if self.weighting == "db_mtl" and (self.mode != "params" or self.jacobian in ("gramian",
                                                                                   "ghost")):
      raise ValueError("db_mtl keeps an EMA of the per-task gradients: it needs mode='params' "
                       f"and jacobian 'full' or 'chunked' (got mode={self.mode!r}, "
                       f"jacobian={self.jacobian!r})")
    if method == "graddrop" and self.mode == "params" and self.jacobian in ("gramian", "ghost"):
      raise ValueError("aggregator 'graddrop' is element-wise: it needs the full Jacobian; "
                       "use jacobian='full' or 'chunked', or mode='features'")


class MTLMethod(NamedTuple):
  init: Callable[..., Any]
  grads: Callable[..., tuple]
  after_step: Callable[..., Any]


def split_heads(params: dict) -> tuple[dict, dict]:
  """(shared params, task-head params): heads live under the top-level key "heads"."""
  if HEADS not in params:
    raise ValueError(f"parameters have no top-level {HEADS!r} entry; keys: {sorted(params)}")
  return {k: v for k, v in params.items() if k != HEADS}, params[HEADS]


def _identity(new_params, batch, state):
  return state


def _sum_tasks(tree):
  """[T, ...] leaves -> [...]: each head's gradient is its own task's row (others are 0)."""
  return jax.tree.map(agg_lib.sum_tasks, tree)


def _rows(cfg: MTLConfig) -> dict[str, Any]:
  """How the T per-task backward passes of the Jacobian modes run (`jacobian.task_jacobian`).

  "chunked": `chunk_size` at a time (`lax.map`). "full": all T together — `vmap` over the
  one-hot cotangents on accelerators; on CPU T separate backward passes in the program, the
  fastest there (tools/bench_mtl.py, T=10: 8.1x a gradient, against 11.8x for `lax.map` and
  15-19x for `vmap`, whose batched matmuls XLA:CPU runs slowly). All store the full
  Jacobian and agree to rounding.
  """
  if cfg.jacobian == "chunked":
    return {"chunk_size": cfg.chunk_size}
  return {"unroll": jax.default_backend() == "cpu"}


def _head_rows(features_fns, shared, heads, z, labels, num_tasks: int):
  """Losses and T single-head backwards from the shared features z: (losses f32[T], stats,
  zgrads [T, *z.shape], head_rows {heads: [T, ...]}), row i = task i's gradient w.r.t. z / the
  head parameters (non-zero on head i only)."""
  _, _, head_loss, task_head_loss = features_fns[:4]
  losses, stats = head_loss({**shared, HEADS: heads}, z, labels)
  rows = [jax.grad(lambda h, zz, i=i: task_head_loss({**shared, HEADS: h}, zz, labels, i),
                   argnums=(0, 1))(heads, z) for i in range(num_tasks)]
  head_rows = jax.tree.map(lambda *r: jnp.stack(r), *[r[0] for r in rows])
  zgrads = jnp.stack([r[1] for r in rows])
  return losses, stats, zgrads, head_rows


def _feature_rows(features_fns, params, batch, num_tasks: int):
  """One encoder forward and T single-head backwards.

  Returns (losses f32[T], stats, zgrads [T, *z.shape], head_rows {heads: [T, ...]}, enc_vjp):
  row i of `zgrads` / `head_rows` is the gradient of task i's loss w.r.t. the shared features
  z / the head parameters (non-zero on head i only).
  """
  prepare, encode = features_fns[:2]
  shared, heads = split_heads(params)
  x, labels = prepare(batch)
  z, enc_vjp = jax.vjp(lambda s: encode({**s, HEADS: heads}, x), shared)
  losses, stats, zgrads, head_rows = _head_rows(features_fns, shared, heads, z, labels,
                                                num_tasks)
  return losses, stats, zgrads, head_rows, enc_vjp


def _ghost_rows(cfg: MTLConfig, features_fns, params, batch, num_tasks: int):
  """The ghost Gramian mode (`jaxmtl.mtl.ghost`): one forward that records every tapped Dense
  layer's input, T head backwards, and T encoder backwards *to the layer outputs only* (the
  cotangents of zero perturbations added there; no per-task weight gradients).

  Returns (losses, stats, G f32[T, T] of the shared parameters' per-task gradients,
  update(w) -> Jᵀw over the shared parameters, head_rows {heads: [T, ...]}).
  """
  taps_fn = getattr(features_fns, "taps", None)
  encode_tapped = getattr(features_fns, "encode_tapped", None)
  if taps_fn is None or encode_tapped is None:
    raise ValueError("mtl.jacobian='ghost' needs the model's FeatureFns with taps "
                     "(train.step.make_features_fns)")
  prepare = features_fns.prepare
  shared, heads = split_heads(params)
  x, labels = prepare(batch)
  taps = taps_fn(params, x)
  _check_ghost_coverage(shared, [t[0] for t in taps])
  zeros = [jnp.zeros(shape, jnp.float32) for _, shape, _, _ in taps]
  z, enc_vjp, inputs = jax.vjp(lambda d: encode_tapped(params, x, d), zeros, has_aux=True)
  losses, stats, zgrads, head_rows = _head_rows(features_fns, shared, heads, z, labels,
                                                num_tasks)
  rows = _rows(cfg)
  deltas = jac_lib.map_rows(lambda zg: enc_vjp(zg)[0], zgrads, rows.get("chunk_size"),
                            rows.get("unroll", False))                  # [T, N, O] per layer
  layers = [ghost_lib.Tap(xi, di, m, b) for xi, di, (_, _, m, b) in zip(inputs, deltas, taps)]
  gram = ghost_lib.ghost_gramian(layers)

  def update(weights):
    grads = {}
    for (path, _, _, _), tap in zip(taps, layers):
      node = shared
      for k in path:
        node = node[k]
      dk, db = ghost_lib.layer_update(tap, weights, node["kernel"].dtype,
                                      node["bias"].dtype if "bias" in node else None)
      grads[tuple(path) + ("kernel",)] = dk
      if db is not None:
        grads[tuple(path) + ("bias",)] = db
    return jax.tree_util.tree_map_with_path(lambda kp, _: grads[_leaf_key(kp)], shared)
  return losses, stats, gram, update, head_rows


def _leaf_key(key_path) -> tuple:
  """A tree_util key path as a tuple of dict keys / sequence indices."""
  return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in key_path)


def _check_ghost_coverage(shared, paths) -> None:
  """Every shared parameter must sit in a tapped layer (its kernel or bias)."""
  covered = set()
  for p in paths:
    covered |= {tuple(p) + ("kernel",), tuple(p) + ("bias",)}
  keys = [_leaf_key(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(shared)[0]]
  missing = ["/".join(map(str, k)) for k in keys if k not in covered]
  if missing:
    raise ValueError(f"mtl.jacobian='ghost' covers only the tapped Dense layers' kernels and "
                     f"biases; these shared parameters are outside them: {missing}")


def _param_rows(cfg: MTLConfig, loss_fn, features_fns, params, batch, num_tasks: int):
  """Per-task gradients of all parameters: (losses, stats, J_shared, J_heads), leaves [T, ...].

  With the model's encoder/heads split (`features_fns`): one forward, then per task its head's
  backward and one encoder backward of its feature gradient — each task's backward skips the
  other T-1 heads (at T=10 about 10% of the Jacobian's time on CPU). Without it:
  `jacobian.task_jacobian` of `loss_fn`. Rows run as `_rows(cfg)` says.
  """
  rows = _rows(cfg)
  if features_fns is None:
    losses, jac, stats = jac_lib.task_jacobian(loss_fn, params, batch, **rows)
    return (losses, stats) + split_heads(jac)
  losses, stats, zgrads, head_rows, enc_vjp = _feature_rows(features_fns, params, batch,
                                                            num_tasks)
  jac = jac_lib.map_rows(lambda zg: enc_vjp(zg)[0], zgrads, rows.get("chunk_size"),
                         rows.get("unroll", False))
  return losses, stats, jac, head_rows


def make_mtl(cfg: MTLConfig, num_tasks: int, loss_fn, features_fns=None,
             steps_per_epoch: int | None = None) -> MTLMethod:
  """Builds the method. `loss_fn(params, batch) -> (losses_T, stats)`;
  `features_fns = (prepare(batch) -> (x, labels), encode(params, x) -> z,
  head_loss(params, z, labels) -> (losses_T, stats), task_head_loss(params, z, labels, i) ->
  task i's loss using head i only)` for `mode="features"` (`train.step.make_features_fns`)."""
  if cfg.mode == "features" and features_fns is None:
    raise ValueError("mtl.mode='features' needs a model with encode() and heads()")
  if cfg.aggregator:
    agg = agg_lib.make_aggregator(cfg.aggregator, **dict(cfg.options))
    if cfg.mode == "features":
      return _features(agg, num_tasks, features_fns)
    return _aggregate(cfg, agg, num_tasks, loss_fn, features_fns)
  if cfg.weighting == "gradnorm":
    return _gradnorm(cfg, num_tasks, loss_fn, features_fns)
  if cfg.weighting == "db_mtl":
    return _db_mtl(cfg, num_tasks, loss_fn, features_fns)
  name = "equal" if cfg.weighting in ("sum", "mean") else cfg.weighting
  opts = {"reduction": cfg.weighting} if cfg.weighting in ("sum", "mean") else dict(cfg.options)
  if name == "dwa" and opts.get("window", "epoch") == "epoch":
    opts.setdefault("steps_per_epoch", steps_per_epoch)  # LibMTL: epoch-mean losses
  return _weighting(w_lib.make_weighting(name, **opts), cfg, num_tasks, loss_fn)


def _weighting(w, cfg: MTLConfig, num_tasks: int, loss_fn) -> MTLMethod:
  """Loss-based weighting: grad of the weighted total w.r.t. (model params, weighting params)."""
  opt = optax.adam(cfg.weighting_lr)

  def init(params=None):
    ws = w.init(num_tasks, key=jax.random.key(0))
    return {"w": ws, "opt": opt.init(ws.params)}

  def grads(params, batch, state, step, key):
    ws = state["w"]

    def total(p, wp):
      losses, stats = loss_fn(p, batch)
      tot, aux = w.update(losses, wp, ws.state, step=step, key=key)
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
    return {**state, "w": ws._replace(state=w.after_step(sg(losses_after), ws.state))}

  famo_same_batch = cfg.weighting == "famo" and dict(cfg.options).get(
      "logit_update", "same_batch") == "same_batch"
  return MTLMethod(init, grads, after_step if famo_same_batch else _identity)


def _row_sq_norms(tree) -> jax.Array:
  """Squared norm of every row of a [T, ...] pytree, f32[T] (row by row: no stacked copy)."""
  return sum(jnp.stack([jnp.sum(jnp.square(j[t].astype(jnp.float32)))
                        for t in range(j.shape[0])]) for j in jax.tree.leaves(tree))


def _sq_norm(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree))


def _gradnorm(cfg: MTLConfig, num_tasks: int, loss_fn, features_fns) -> MTLMethod:
  """GradNorm: per-task gradient norms (shared params or shared features, as LibMTL's
  `rep_grad`), the logits' L_grad, and the model gradient sum_i w_i grad L_i from the same
  backward passes (heads get w_i times their task's gradient, as in LibMTL)."""
  w = w_lib.make_weighting("gradnorm", **dict(cfg.options))
  opt = optax.adam(cfg.weighting_lr)

  def per_task(params, batch):
    """(losses, grad_norms f32[T], stats, backward(w) -> sum_i w_i grad L_i)."""
    if cfg.mode == "features":
      losses, stats, zgrads, head_rows, enc_vjp = _feature_rows(features_fns, params, batch,
                                                                num_tasks)

      def backward(weights):
        z_cot = agg_lib.combine(zgrads, weights)
        return {**enc_vjp(z_cot)[0], HEADS: agg_lib.combine(head_rows, weights)}
      return losses, jnp.sqrt(_row_sq_norms(zgrads)), stats, backward
    if cfg.jacobian == "ghost":
      losses, stats, g, update, head_rows = _ghost_rows(cfg, features_fns, params, batch,
                                                        num_tasks)
      norms = jnp.sqrt(jnp.maximum(jnp.diagonal(g), 0.0))
      return losses, norms, stats, lambda weights: {
          **update(weights), HEADS: agg_lib.combine(head_rows, weights)}
    if cfg.jacobian == "full":
      losses, stats, jac_shared, jac_heads = _param_rows(cfg, loss_fn, features_fns, params,
                                                         batch, num_tasks)
      jac = {**jac_shared, HEADS: jac_heads}
      norms = jnp.sqrt(_row_sq_norms(jac_shared))
      return losses, norms, stats, lambda weights: jac_lib.combine(weights, jac)
    # chunked / gramian: never store J; one more backward for the weighted gradient.
    losses, vjp_fn, stats = jax.vjp(lambda p: loss_fn(p, batch), params, has_aux=True)
    eye = jnp.eye(num_tasks, dtype=losses.dtype)
    sq = jax.lax.map(lambda e: _sq_norm(split_heads(vjp_fn(e)[0])[0]), eye,
                     batch_size=cfg.chunk_size)
    return losses, jnp.sqrt(sq), stats, lambda weights: vjp_fn(
        weights.astype(losses.dtype))[0]

  def init(params=None):
    ws = w.init(num_tasks)
    return {"w": ws, "opt": opt.init(ws.params)}

  def grads(params, batch, state, step, key):
    ws = state["w"]
    losses, norms, stats, backward = per_task(params, batch)
    (_, aux), gw = jax.value_and_grad(
        lambda wp: w.update(sg(losses), wp, ws.state, step=step, key=key, grad_norms=norms),
        has_aux=True)(ws.params)
    g = backward(aux.weights)
    upd, opt_state = opt.update(gw, state["opt"], ws.params)
    new = {"w": w_lib.WeightingState(optax.apply_updates(ws.params, upd), aux.state),
           "opt": opt_state}
    return g, losses, aux.weights, new, stats

  return MTLMethod(init, grads, _identity)


def _db_mtl(cfg: MTLConfig, num_tasks: int, loss_fn, features_fns) -> MTLMethod:
  """DB-MTL (arXiv 2308.02333, LibMTL DB_MTL) on the shared parameters' per-task gradients."""
  d = w_lib.make_weighting("db_mtl", **dict(cfg.options))
  eps = float(dict(cfg.options).get("eps", 1e-8))
  def init(params=None):
    if params is None:
      raise ValueError("db_mtl's state (an EMA of the per-task gradients) is sized from the "
                       "parameters: call init(params)")
    shared, _ = split_heads(params)
    return {"db": d.init(jax.tree.map(
        lambda p: jax.ShapeDtypeStruct((num_tasks,) + tuple(p.shape), jnp.float32), shared))}

  def grads(params, batch, state, step, key):
    losses, stats, jac_shared, jac_heads = _param_rows(cfg, loss_fn, features_fns, params,
                                                       batch, num_tasks)
    update, aux = d.update(jac_shared, losses, state["db"])
    # Heads: gradient of sum_i log(L_i + eps) = sum_i dlog_i grad L_i.
    dlog = jax.grad(lambda l: w_lib.db_mtl_log_losses(l, eps))(sg(losses))
    head_grads = jax.tree.map(lambda j: jnp.tensordot(dlog.astype(j.dtype), j, axes=1),
                              jac_heads)
    return {**update, HEADS: head_grads}, losses, aux.weights, {"db": aux.state}, stats

  return MTLMethod(init, grads, _identity)


def _aggregate(cfg: MTLConfig, agg, num_tasks: int, loss_fn, features_fns) -> MTLMethod:
  """Gradient aggregation of the shared parameters' per-task gradients."""

  def init(params=None):
    return {"agg": agg.init(num_tasks)} if agg.stateful else {}

  def grads(params, batch, state, step, key):
    agg_state = state.get("agg")
    if cfg.jacobian == "ghost":
      losses, stats, g, combine, head_rows = _ghost_rows(cfg, features_fns, params, batch,
                                                         num_tasks)
      head_grads = _sum_tasks(head_rows)
      weights, agg_state = agg.weights(g, state=agg_state, key=key)
      update = combine(weights)
    elif cfg.jacobian == "gramian":
      shared, heads = split_heads(params)
      fn = lambda s, h, b: loss_fn({**s, HEADS: h}, b)
      losses, g, stats, combine, head_grads = jac_lib.split_task_gramian(
          fn, shared, heads, batch, chunk_size=cfg.chunk_size)
      weights, agg_state = agg.weights(g, state=agg_state, key=key)
      update = combine(weights)
    else:
      # One backward per task over all parameters: the shared rows are aggregated, and each
      # head only sees its own task's loss, so summing the head rows gives its gradient.
      losses, stats, jac_shared, jac_heads = _param_rows(cfg, loss_fn, features_fns, params,
                                                         batch, num_tasks)
      head_grads = _sum_tasks(jac_heads)
      update, weights, agg_state = agg(jac_shared, state=agg_state, key=key,
                                       rows=_rows(cfg).get("unroll", False))
    new_state = {"agg": agg_state} if agg.stateful else {}
    weights = jnp.zeros((num_tasks,)) if weights is None else weights
    return {**update, HEADS: head_grads}, losses, weights, new_state, stats

  return MTLMethod(init, grads, _identity)


def _features(agg, num_tasks: int, features_fns) -> MTLMethod:
  """Representation-level aggregation (MGDA-UB style) on dL_t/dz."""

  def init(params=None):
    return {"agg": agg.init(num_tasks)} if agg.stateful else {}

  def grads(params, batch, state, step, key):
    losses, stats, zgrads, head_rows, enc_vjp = _feature_rows(features_fns, params, batch,
                                                              num_tasks)
    if isinstance(agg, agg_lib.GradDrop):  # element-wise on the activations' gradients
      z_cot, weights, agg_state = agg(zgrads, state=state.get("agg"), key=key)
      weights = jnp.zeros((num_tasks,))
    else:
      weights, agg_state = agg.weights(agg_lib.gramian(zgrads), state=state.get("agg"), key=key)
      z_cot = agg_lib.combine(zgrads, weights)
    (shared_g,) = enc_vjp(z_cot)
    # Heads: each task's own gradient (unweighted), as in the parameter-level mode.
    new_state = {"agg": agg_state} if agg.stateful else {}
    return {**shared_g, HEADS: _sum_tasks(head_rows)}, losses, weights, new_state, stats

  return MTLMethod(init, grads, _identity)
