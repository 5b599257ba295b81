"""Loss-based multi-task weighting: equal, UW, DWA, RLW, GradNorm, FAMO (+ DB-MTL, gradient-based).

Contract (optax-like, pure, jit-able; see docs/mtl_weighting.md)::

  weighting = make_weighting("uw", parametrization="libmtl")
  wstate = weighting.init(num_tasks, key=key)     # WeightingState(params, state): pytrees
  total, waux = weighting.update(losses, wstate.params, wstate.state, step=step, key=key,
                                 **extras)        # -> (f32[], WeightingAux(weights, state))
  wstate = WeightingState(new_params, waux.state)
  wstate = wstate._replace(state=weighting.after_step(losses_after, wstate.state))  # FAMO only

* ``params`` are *trainable* weighting parameters (UW log-variances, GradNorm logits): the train
  step differentiates ``total`` w.r.t. them together with the model parameters
  (``jax.value_and_grad(..., argnums=(model, wparams))``) and updates them with an optimizer.
  Methods without trainable parameters use ``{}``.
* ``state`` holds non-differentiable buffers (loss histories, FAMO logits and Adam moments,
  initial losses). The new state comes back in ``waux.state``; it is computed from
  ``stop_gradient(losses)`` so it can be returned through ``has_aux``.
* ``total`` is the scalar whose gradient w.r.t. the model parameters is the weighted update;
  ``waux.weights`` f32[T] are the (stop-gradient) task weights for logging.
* ``after_step(losses_after f32[T], state) -> state`` is a hook run after the optimizer step on
  the losses of the *same* batch re-evaluated with the new parameters (FAMO's logit update, as
  in the official code and LibMTL's trainer); identity for every other method.

Both ``params`` and ``state`` are pytrees of arrays: they live in the train state and are
checkpointed by orbax. DB-MTL needs per-task gradients and so is a :class:`GradientWeighting`
(``update(jacobian, losses, state) -> (combined_update, aux)``), see :func:`db_mtl`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxmtl.mtl.aggregators.base import weighted_sum

PyTree = Any
sg = jax.lax.stop_gradient

__all__ = [
  "WeightingState", "WeightingAux", "LossWeighting", "GradientWeighting",
  "equal", "uncertainty", "dwa", "rlw", "gradnorm", "famo", "db_mtl", "db_mtl_log_losses",
  "WEIGHTINGS", "make_weighting",
]


class WeightingState(NamedTuple):
  """``params``: trainable (differentiated) pytree; ``state``: non-differentiable buffers."""
  params: PyTree
  state: PyTree


class WeightingAux(NamedTuple):
  """``weights`` f32[T] (stop-gradient, for logging) and the new non-differentiable ``state``."""
  weights: jax.Array
  state: PyTree


class LossWeighting(NamedTuple):
  """``init(num_tasks, *, key=None) -> WeightingState``;
  ``update(losses f32[T], params, state, *, step, key=None, **extras) -> (f32[], WeightingAux)``;
  ``after_step(losses_after f32[T], state) -> state``."""
  init: Callable[..., WeightingState]
  update: Callable[..., tuple[jax.Array, WeightingAux]]
  after_step: Callable[..., PyTree]


class GradientWeighting(NamedTuple):
  """``init(jacobian_like) -> state``;
  ``update(jacobian, losses, state) -> (combined_update pytree, WeightingAux)``."""
  init: Callable[..., PyTree]
  update: Callable[..., tuple[PyTree, WeightingAux]]


def _identity_after_step(losses_after, state, **_):
  del losses_after
  return state


def _check_num_tasks(num_tasks: Any) -> int:
  if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
  return num_tasks


def _check_losses(losses: Any) -> jax.Array:
  losses = jnp.asarray(losses)
  if losses.ndim != 1:
    raise ValueError(f"losses must have shape [num_tasks], got {losses.shape}")
  if not jnp.issubdtype(losses.dtype, jnp.floating):
    raise TypeError(f"losses must be floating point, got dtype {losses.dtype}")
  return losses


def _choice(name: str, value: Any, valid: tuple) -> None:
  if value not in valid:
    raise ValueError(f"{name} must be one of {valid}, got {value!r}")


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      value < 0 if allow_zero else value <= 0):
    raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} "
                     f"number, got {value!r}")
  return float(value)


def _weighted(losses: jax.Array, weights: jax.Array, state: PyTree):
  weights = sg(weights).astype(losses.dtype)
  return jnp.sum(weights * losses), WeightingAux(weights, state)


# ------------------------------------------------------------------------------------ equal
def equal(reduction: str = "sum") -> LossWeighting:
  """Equal weighting (EW). ``"sum"``: weights 1 (LibMTL ``EW``); ``"mean"``: weights 1/T.

  Reference: LibMTL (LibMTL/weighting/EW.py, arXiv 2203.14338).
  """
  _choice("reduction", reduction, ("sum", "mean"))

  def init(num_tasks, *, key=None):
    del key
    _check_num_tasks(num_tasks)
    return WeightingState({}, {})

  def update(losses, params, state, *, step=None, key=None, **extras):
    del params, step, key, extras
    losses = _check_losses(losses)
    t = losses.shape[0]
    w = jnp.full((t,), 1.0 if reduction == "sum" else 1.0 / t, losses.dtype)
    return _weighted(losses, w, state)

  return LossWeighting(init, update, _identity_after_step)


# --------------------------------------------------------------------------------------- UW
def uncertainty(parametrization: str = "libmtl") -> LossWeighting:
  """Uncertainty weighting (UW): Kendall, Gal & Cipolla, "Multi-Task Learning Using
  Uncertainty to Weigh Losses for Scene Geometry and Semantics", arXiv 1705.07115.

  ``total = Σ_i L_i / (2 exp(s_i)) + s_i / 2`` with trainable ``params = {"log_var": f32[T]}``
  (``s = log σ²``). Both references use this same function; they differ in init and in the
  reported weights:

  * ``"libmtl"`` (LibMTL/weighting/UW.py): ``s`` starts at -0.5; weights ``1/(2 exp(s))``.
  * ``"nash_mtl"`` (AvivNavon/nash-mtl methods/weight_methods.py ``Uncertainty``, written
    ``0.5 (exp(-logsigma) L + logsigma)``): ``s`` starts at 0; weights ``exp(-s)``.

  ``log_var`` must be differentiated with the model parameters (see module docstring).

  Losses ``<= 0``: the ``s``-gradient ``(1 - L e^{-s}) / 2`` has its root at ``s = log L``, which
  does not exist for ``L <= 0`` (``s`` would fall without bound and the weight overflow). Such a
  task (e.g. a loss that is exactly 0 because a mixture batch holds no example of it) gets no
  ``s``-gradient that step (``s`` kept, its ``s/2`` term left out); its model gradient is still
  ``∇L / (2 e^s)``. Positive losses are unchanged.
  """
  _choice("parametrization", parametrization, ("libmtl", "nash_mtl"))
  s0 = -0.5 if parametrization == "libmtl" else 0.0

  def init(num_tasks, *, key=None):
    del key
    t = _check_num_tasks(num_tasks)
    return WeightingState({"log_var": jnp.full((t,), s0, jnp.float32)}, {})

  def update(losses, params, state, *, step=None, key=None, **extras):
    del step, key, extras
    losses = _check_losses(losses)
    s = params["log_var"]
    if s.shape != losses.shape:
      raise ValueError(f"log_var has shape {s.shape}, losses {losses.shape}")
    present = sg(losses) > 0
    s_used = jnp.where(present, s, sg(s))  # no s-gradient where L <= 0
    total = jnp.sum(losses * jnp.exp(-s_used) / 2 + jnp.where(present, s, 0.0) / 2)
    w = 0.5 * jnp.exp(-s) if parametrization == "libmtl" else jnp.exp(-s)
    return total, WeightingAux(sg(w), state)

  return LossWeighting(init, update, _identity_after_step)


# -------------------------------------------------------------------------------------- DWA
def dwa(temperature: float = 2.0, window: str = "epoch",
        steps_per_epoch: int | None = None, eps: float = 1e-8) -> LossWeighting:
  """Dynamic Weight Average: Liu, Johns & Davison, "End-to-End Multi-Task Learning with
  Attention", arXiv 1803.10704. Follows LibMTL/weighting/DWA.py.

  In window k the weights are ``T · softmax(r / temperature)``, ``r_i = L̄_i(k-1) / L̄_i(k-2)``
  where ``L̄(k)`` is the mean loss over window k; ones while fewer than 2 windows are complete.
  ``window="epoch"`` (LibMTL: epoch averages) needs ``steps_per_epoch`` and the window is
  ``step // steps_per_epoch``; ``window="step"`` uses the losses of the two previous steps.
  State: per-task running sum and count of the current window and the last two window means.

  Losses ``<= 0`` carry no information for a loss ratio (a mixture batch without examples of a
  task reports loss 0): they are left out of the window means (per-task counts), and a task
  whose mean in either of the two windows is ``<= 0`` or empty gets the neutral ratio
  ``r_i = 1``. With positive losses this is exactly LibMTL's rule. ``eps`` guards the division
  (kept for API compatibility; the ratio is only taken of positive means).
  """
  temperature = _positive("temperature", temperature)
  _positive("eps", eps)
  _choice("window", window, ("epoch", "step"))
  if window == "epoch":
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or (
        steps_per_epoch < 1):
      raise ValueError("window='epoch' needs steps_per_epoch, a positive int; got "
                       f"{steps_per_epoch!r}")
    size = steps_per_epoch
  else:
    size = 1

  def init(num_tasks, *, key=None):
    del key
    t = _check_num_tasks(num_tasks)
    z = jnp.zeros((t,), jnp.float32)
    return WeightingState({}, {
      "sum": z, "count": z, "steps": jnp.zeros((), jnp.int32),
      "window": jnp.zeros((), jnp.int32), "last": z, "before_last": z,
      "completed": jnp.zeros((), jnp.int32)})

  def update(losses, params, state, *, step, key=None, **extras):
    del params, key, extras
    losses = _check_losses(losses)
    t = losses.shape[0]
    if state["sum"].shape != (t,):
      raise ValueError(f"dwa state is for {state['sum'].shape[0]} tasks, losses has {t}")
    k = (jnp.asarray(step) // size).astype(jnp.int32)
    roll = (k != state["window"]) & (state["steps"] > 0)
    mean = jnp.where(state["count"] > 0, state["sum"] / jnp.maximum(state["count"], 1.0), 0.0)
    last = jnp.where(roll, mean, state["last"])
    before = jnp.where(roll, state["last"], state["before_last"])
    completed = state["completed"] + roll.astype(jnp.int32)
    valid = (last > 0) & (before > 0)
    ratio = jnp.where(valid, last / jnp.maximum(before, eps), 1.0)
    w = jnp.where(completed >= 2, t * jax.nn.softmax(ratio / temperature), jnp.ones((t,)))
    lv = sg(losses).astype(jnp.float32)
    present = lv > 0
    new_state = {
      "sum": jnp.where(roll, 0.0, state["sum"]) + jnp.where(present, lv, 0.0),
      "count": jnp.where(roll, 0.0, state["count"]) + present.astype(jnp.float32),
      "steps": jnp.where(roll, 0, state["steps"]) + 1, "window": k,
      "last": last, "before_last": before, "completed": completed}
    return _weighted(losses, w, new_state)

  return LossWeighting(init, update, _identity_after_step)


# -------------------------------------------------------------------------------------- RLW
def rlw(distribution: str = "normal") -> LossWeighting:
  """Random loss weighting: Lin et al., "Reasonable Effectiveness of Random Weighting: A
  Litmus Test for Multi-Task Learning" (first "A Closer Look at Loss Weighting in Multi-Task
  Learning"), arXiv 2111.10603. Follows LibMTL/weighting/RLW.py: a fresh sample per step from
  the explicit ``key`` (required); ``"normal"``/``"uniform"``/``"dirichlet"`` samples go
  through a softmax (weights sum to 1, not T); ``"bernoulli"`` uses the 0/1 sample itself,
  resampled until not all zero.
  """
  _choice("distribution", distribution, ("normal", "uniform", "dirichlet", "bernoulli"))

  def init(num_tasks, *, key=None):
    del key
    _check_num_tasks(num_tasks)
    return WeightingState({}, {})

  def sample(key, t):
    if distribution == "normal":
      return jax.nn.softmax(jax.random.normal(key, (t,), jnp.float32))
    if distribution == "uniform":
      return jax.nn.softmax(jax.random.uniform(key, (t,), jnp.float32))
    if distribution == "dirichlet":
      return jax.nn.softmax(jax.random.dirichlet(key, jnp.ones((t,), jnp.float32)))

    def draw(carry):
      k, _ = carry
      k, sub = jax.random.split(k)
      return k, jax.random.bernoulli(sub, 0.5, (t,)).astype(jnp.float32)

    return jax.lax.while_loop(lambda c: jnp.sum(c[1]) == 0, draw,
                              (key, jnp.zeros((t,), jnp.float32)))[1]

  def update(losses, params, state, *, step=None, key=None, **extras):
    del params, step, extras
    if key is None:
      raise ValueError("rlw needs an explicit PRNG key: update(..., key=key)")
    losses = _check_losses(losses)
    return _weighted(losses, sample(key, losses.shape[0]), state)

  return LossWeighting(init, update, _identity_after_step)


# --------------------------------------------------------------------------------- GradNorm
def gradnorm(alpha: float = 1.5, eps: float = 1e-8) -> LossWeighting:
  """GradNorm: Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
  Deep Multitask Networks", arXiv 1711.02257. Follows LibMTL/weighting/GradNorm.py.

  Trainable ``params = {"logits": f32[T]}`` (init 1); weights ``w = T · softmax(logits)``
  (sum T, LibMTL's renormalisation). ``update`` needs ``grad_norms=f32[T]``: ``‖∇_W L_i‖`` of the
  *unweighted* task losses w.r.t. the shared parameters ``W`` (the paper: the last shared
  layer; LibMTL: all shared parameters, or the shared representation with ``rep_grad``), e.g.
  ``jnp.sqrt(jnp.diag(G))`` from ``jacobian.task_gramian`` on those parameters. The train step
  supplies them as constants.

  ``total = Σ sg(w_i) L_i + Σ_i |w_i n_i − sg(mean(w n) · r_i^α)|`` with
  ``r_i = L̃_i / mean(L̃)``, ``L̃_i = L_i / L_i(0)``: its gradient w.r.t. the model is the
  weighted loss gradient and w.r.t. ``logits`` is GradNorm's ``∇ L_grad``. ``L_i(0)`` is task
  i's first positive loss (stored in ``state``) unless ``initial_losses=f32[T]`` is passed
  (LibMTL uses the first epoch's mean); it is clamped at ``eps``.

  Losses ``<= 0`` (e.g. 0 for a task without examples in a mixture batch) have no meaningful
  training rate: such a task is left out of ``L_grad`` and of the means ``mean(L̃)``,
  ``mean(w n)`` that step, and its ``L(0)`` is only recorded at its first positive loss. With
  positive losses this is exactly LibMTL's ``L_grad``.
  """
  alpha = _positive("alpha", alpha, allow_zero=True)
  eps = _positive("eps", eps)

  def init(num_tasks, *, key=None):
    del key
    t = _check_num_tasks(num_tasks)
    return WeightingState({"logits": jnp.ones((t,), jnp.float32)},
                          {"initial_losses": jnp.zeros((t,), jnp.float32),
                           "initialized": jnp.zeros((t,), jnp.bool_)})

  def update(losses, params, state, *, step=None, key=None, grad_norms=None,
             initial_losses=None, **extras):
    del step, key, extras
    losses = _check_losses(losses)
    if grad_norms is None:
      raise ValueError("gradnorm needs grad_norms=f32[T]: the norms of each task loss's "
                       "gradient w.r.t. the (last) shared parameters")
    grad_norms = sg(jnp.asarray(grad_norms, jnp.float32))
    if grad_norms.shape != losses.shape:
      raise ValueError(f"grad_norms has shape {grad_norms.shape}, losses {losses.shape}")
    t = losses.shape[0]
    lv = sg(losses).astype(jnp.float32)
    present = lv > 0
    if initial_losses is not None:
      init_l = jnp.asarray(initial_losses, jnp.float32)
      initialized = jnp.ones((t,), jnp.bool_)
    else:
      first = ~state["initialized"] & present
      init_l = jnp.where(first, lv, state["initial_losses"])
      initialized = state["initialized"] | present
    use = present & initialized
    n_use = jnp.maximum(jnp.sum(use), 1)
    w = t * jax.nn.softmax(params["logits"])
    gw = w * grad_norms
    ratio = jnp.where(use, lv / jnp.maximum(init_l, eps), 0.0)
    r = ratio / jnp.maximum(jnp.sum(ratio) / n_use, eps)
    mean_gw = jnp.sum(jnp.where(use, gw, 0.0)) / n_use
    target = sg(mean_gw * r ** alpha)
    l_grad = jnp.sum(jnp.where(use, jnp.abs(gw - target), 0.0))
    total = jnp.sum(sg(w).astype(losses.dtype) * losses) + l_grad
    new_state = {"initial_losses": init_l, "initialized": initialized}
    return total, WeightingAux(sg(w), new_state)

  return LossWeighting(init, update, _identity_after_step)


# ------------------------------------------------------------------------------------- FAMO
def famo(lr: float = 0.025, gamma: float = 1e-3, logit_update: str = "same_batch",
         min_losses: Any = None, eps: float = 1e-8, b1: float = 0.9, b2: float = 0.999,
         adam_eps: float = 1e-8) -> LossWeighting:
  """FAMO: Liu et al., "FAMO: Fast Adaptive Multitask Optimization", arXiv 2306.03775.
  Follows the official code (Cranial-XIX/FAMO famo.py) and LibMTL/weighting/FAMO.py.

  ``z = softmax(w)``, ``D_i = L_i − m_i + eps``, ``c = sg(Σ z_i / D_i)``,
  ``total = Σ z_i log(D_i) / c`` (gradient ``Σ (z_i / (c D_i)) ∇L_i``, effective weights summing
  to 1). ``m`` = ``min_losses`` (default 0, as ``set_min_losses``).

  Losses at or below their minimum (``L_i <= m_i``: the official ``log(L − m + 1e-8)`` is NaN
  below ``m − 1e-8``; a mixture batch without examples of a task reports ``L = 0``) are treated
  as *reached*: the task is left out of the sum and of ``c`` that step (weight 0, no gradient),
  the other tasks share the update as usual, and its ``δ`` in the logit step is 0. If every
  task is at its minimum, ``total = 0`` (zero update). Above the minimum everything is the
  official formula.

  Logit step: ``δ = log D(prev) − log D(curr)``, gradient ``d = J_softmax(w)ᵀ δ``, then
  ``torch.optim.Adam(lr, weight_decay=gamma)`` (L2 decay added to ``d``; bias-corrected). The
  step uses the losses before (``prev``, stored at ``update``) and after (``curr``) the model
  step: ``logit_update="same_batch"`` (official, LibMTL) — the train step re-evaluates the
  same batch after the optimizer step and calls ``after_step(curr_losses, state)``;
  ``"next_batch"`` — no extra forward: ``update`` uses the next step's losses as ``curr``.

  Defaults: lr 0.025 (all references); gamma 1e-3 (LibMTL; official famo.py: 0.01,
  official methods/weight_methods.py: 1e-5). FAMO's gradient clipping (max_norm 1) is left to
  the optimizer (``optax.clip_by_global_norm``).
  """
  lr = _positive("lr", lr)
  gamma = _positive("gamma", gamma, allow_zero=True)
  _choice("logit_update", logit_update, ("same_batch", "next_batch"))

  def log_d(losses, m):
    """(log D f32[T], present bool[T]): ``log(L − m + eps)`` where ``L > m``, else 0."""
    present = losses > m
    return jnp.where(present, jnp.log(jnp.where(present, losses - m, 1.0) + eps), 0.0), present

  def init(num_tasks, *, key=None):
    del key
    t = _check_num_tasks(num_tasks)
    z = jnp.zeros((t,), jnp.float32)
    m = z if min_losses is None else jnp.asarray(min_losses, jnp.float32)
    if m.shape != (t,):
      raise ValueError(f"min_losses must have shape ({t},), got {m.shape}")
    return WeightingState({}, {"logits": z, "mu": z, "nu": z,
                               "count": jnp.zeros((), jnp.int32), "min_losses": m,
                               "prev_losses": z, "has_prev": jnp.zeros((), jnp.bool_)})

  def logit_step(curr_losses, state):
    curr = sg(jnp.asarray(curr_losses, jnp.float32))
    m = state["min_losses"]
    (before, ok_before), (after, ok_after) = log_d(state["prev_losses"], m), log_d(curr, m)
    delta = jnp.where(ok_before & ok_after, before - after, 0.0)
    w = state["logits"]
    z = jax.nn.softmax(w)
    d = z * (delta - jnp.dot(z, delta)) + gamma * w
    count = state["count"] + 1
    mu = b1 * state["mu"] + (1 - b1) * d
    nu = b2 * state["nu"] + (1 - b2) * d * d
    c = count.astype(jnp.float32)
    step = lr / (1 - b1 ** c) * mu / (jnp.sqrt(nu) / jnp.sqrt(1 - b2 ** c) + adam_eps)
    new = dict(state, logits=w - step, mu=mu, nu=nu, count=count)
    keep = state["has_prev"]  # no-op before any update() has stored prev losses
    return jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, state)

  def update(losses, params, state, *, step=None, key=None, **extras):
    del params, step, key, extras
    losses = _check_losses(losses)
    if logit_update == "next_batch":
      state = logit_step(losses, state)
    z = jax.nn.softmax(state["logits"]).astype(losses.dtype)
    m = state["min_losses"].astype(losses.dtype)
    dlog, present = log_d(losses, m)
    c = sg(jnp.sum(jnp.where(present, z / (jnp.where(present, losses - m, 1.0) + eps), 0.0)))
    total = jnp.sum(jnp.where(present, dlog * z, 0.0)) / jnp.where(c > 0, c, 1.0)
    new_state = dict(state, prev_losses=sg(losses).astype(jnp.float32),
                     has_prev=jnp.ones((), jnp.bool_))
    return total, WeightingAux(sg(z), new_state)

  def after_step(losses_after, state, **_):
    if logit_update == "next_batch":
      return state
    return logit_step(losses_after, state)

  return LossWeighting(init, update, after_step)


# ----------------------------------------------------------------------------------- DB-MTL
def db_mtl(beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8) -> GradientWeighting:
  """DB-MTL: Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv 2308.02333.
  Follows LibMTL/weighting/DB_MTL.py (defaults ``DB_beta=0.9``, ``DB_beta_sigma=0``).

  Gradient-based: ``update(jacobian, losses, state) -> (combined, WeightingAux)``, where
  ``jacobian`` is the per-task gradient pytree ``[T, ...]`` of the *raw* losses w.r.t. the
  shared parameters (``jacobian.task_jacobian``). Loss-scale balancing: the gradient of
  ``log(L_i + eps)`` is ``g_i / (L_i + eps)``. Gradient-magnitude balancing: EMA buffer
  ``b ← g + β_t (b − g)``, ``β_t = β / k^σ`` (k = 1, 2, ... counted in ``state``; buffer starts
  at 0, no bias correction); ``α_i = max_j ‖b_j‖ / (‖b_i‖ + eps)``; ``combined = Σ α_i b_i`` (a
  pytree like one Jacobian row). ``init(jacobian_like)`` takes the Jacobian (or its
  ``jax.eval_shape``) to size the buffer, O(T·P) memory: a list of T pytrees like one row.
  Task-specific parameters get the gradient of ``Σ_i log(L_i + eps)`` over the tasks with
  ``L_i > 0`` (:func:`db_mtl_log_losses`).

  Losses ``<= 0`` (``log`` undefined; LibMTL gives NaN below 0 and a ``1e8``-scaled gradient at
  exactly 0; a mixture batch without examples of a task reports 0): the task is left out that
  step — weight ``α_i = 0``, its buffer row kept as it is, and the maximum in ``α`` taken over
  the other tasks. If no task has a positive loss the update is zero.
  """
  beta = _positive("beta", beta, allow_zero=True)
  beta_sigma = _positive("beta_sigma", beta_sigma, allow_zero=True)
  eps = _positive("eps", eps)

  def init(jacobian_like):
    # One pytree per task (not leaves stacked [T, ...]): each task's EMA then writes its own
    # (donated) buffer in place; a stacked buffer costs one more copy of T x P floats a step.
    n = jax.tree_util.tree_leaves(jacobian_like)[0].shape[0]
    buf = [jax.tree_util.tree_map(lambda j: jnp.zeros(j.shape[1:], jnp.float32), jacobian_like)
           for _ in range(n)]
    return {"buffer": buf, "count": jnp.zeros((), jnp.int32)}

  def update(jacobian, losses, state, **_):
    losses = _check_losses(losses)
    lv = sg(losses).astype(jnp.float32)
    present = lv > 0
    scale = jnp.where(present, 1.0 / (jnp.where(present, lv, 1.0) + eps), 0.0)
    count = state["count"] + 1
    beta_t = beta / count.astype(jnp.float32) ** beta_sigma

    # Row by row (j[t]; never an op over a stacked [T, ...] leaf) so that XLA reads the T
    # backward passes' outputs where they are, as GradDrop does (docs/benchmarks.md).
    def ema(t, j, b):
      g = j[t].astype(jnp.float32) * scale[t]
      return jnp.where(present[t], g + beta_t * (b - g), b)

    buf = [jax.tree_util.tree_map(functools.partial(ema, t), jacobian, b)
           for t, b in enumerate(state["buffer"])]
    norms = jnp.sqrt(jnp.stack([sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(b))
                                for b in buf]))
    top = jnp.max(jnp.where(present, norms, 0.0))
    alpha = jnp.where(present, top / (norms + eps), 0.0)
    combined = jax.tree_util.tree_map(
        lambda j, *rows: weighted_sum(rows, alpha).astype(j.dtype), jacobian, *buf)
    return combined, WeightingAux(alpha, {"buffer": buf, "count": count})

  return GradientWeighting(init, update)


def db_mtl_log_losses(losses: jax.Array, eps: float = 1e-8) -> jax.Array:
  """``Σ_i log(L_i + eps)`` over the tasks with ``L_i > 0`` (DB-MTL's objective for
  task-specific parameters, LibMTL ``DB_MTL``); tasks with ``L_i <= 0`` contribute 0 and no
  gradient."""
  losses = _check_losses(losses)
  present = sg(losses) > 0
  return jnp.sum(jnp.where(present, jnp.log(jnp.where(present, losses, 1.0) + eps), 0.0))


# --------------------------------------------------------------------------------- registry
WEIGHTINGS: dict[str, Callable[..., LossWeighting | GradientWeighting]] = {
  "equal": equal, "uw": uncertainty, "dwa": dwa, "rlw": rlw, "gradnorm": gradnorm,
  "famo": famo, "db_mtl": db_mtl,
}


def make_weighting(name: str, **options: Any) -> LossWeighting | GradientWeighting:
  """Builds a weighting by registry name (``WEIGHTINGS``) with keyword ``options``."""
  if name not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {name!r}; valid names: {sorted(WEIGHTINGS)}")
  factory = WEIGHTINGS[name]
  valid = list(inspect.signature(factory).parameters)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for weighting {name!r}; valid: {valid}")
  return factory(**options)
