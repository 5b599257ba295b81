"""Optax optimizers with per-parameter μP multipliers, schedules and weight-decay modes.

``make_optimizer(cfg, rules)`` builds one ``optax.GradientTransformation``:

  clip by global norm -> [coupled decay: g += wd·wd_scale·θ] -> direction (Adam with
  per-parameter ε, Adam-atan2, SGD(+momentum) or Lion) -> [decoupled decay: d += wd·wd_scale·θ]
  -> update = -lr·s(t)·lr_scale·d  [- s(t)·wd·wd_scale·θ for independent decay]

``s(t)`` is the schedule's *shape* (peak 1), so the schedule multiplies every parameter's rate
and never overwrites the per-parameter multipliers (Tensor Programs V, arXiv 2203.03466, App. B:
μP scales the lr of each parameter group; microsoft/mup 1.0.0 ``MuAdam``/``MuSGD`` do so through
torch param groups, whose lr a scheduler multiplies). ``rules`` is a pytree of
``jaxmtl.mup.ParamRule`` with the structure of the params (an ``nnx.State`` or a dict), or None
(all multipliers 1, weight decay on parameters of rank >= 2).

Conventions and references:
* Adam: optax's ``scale_by_adam`` (bias-corrected moments, ``eps_root = 0``) with a pytree of ε,
  ``ε·eps_scale`` per parameter ("adamw" is the same with ``weight_decay_mode="decoupled"``).
* Adam-atan2 (Everett et al. 2024, arXiv 2407.05872, Alg. 1 with a = b = 1):
  direction ``atan2(m̂, sqrt(v̂))``; ε-free and invariant to the gradient scale.
* Lion: ``optax.scale_by_lion(b1, b2)`` (Chen et al. 2023, arXiv 2302.06675).
* SGD: ``optax.trace(momentum, nesterov)`` (torch.optim.SGD without dampening).
* Weight decay: ``"coupled"`` (L2 in the gradient, torch ``Adam``/``SGD`` ``weight_decay``),
  ``"decoupled"`` (``lr·s(t)·lr_scale·wd·wd_scale·θ``, torch ``AdamW``; Loshchilov & Hutter,
  arXiv 1711.05101), ``"independent"`` (``s(t)·wd·wd_scale·θ``: multiplied by the schedule but
  not by lr; Wortsman et al. 2023, arXiv 2309.14322; lucaslingle/mu_transformer applies
  ``add_decayed_weights(-wd)`` before ``scale_by_schedule``). Vectors (biases, gains; role
  ``"vector"``) are not decayed unless ``decay_vectors=True``.
* Schedules (shape s(t), t = 0, 1, ...): linear warmup ``s = (t+1)/warmup_steps`` for
  ``t < warmup_steps`` (never a zero step), then ``constant`` 1, ``cosine`` / ``linear`` decay
  from 1 to ``min_lr_ratio`` at ``total_steps``, or ``rsqrt`` ``sqrt(max(warmup, 1)/(t+1))``;
  ``cosine`` and ``linear`` ignore ``warmup_steps`` (use the ``warmup_*`` schedules).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmtl import mup

NAMES = ("adam", "adamw", "adam_atan2", "sgd", "lion")
SCHEDULES = ("constant", "cosine", "linear", "warmup_cosine", "warmup_linear", "rsqrt")
WEIGHT_DECAY_MODES = mup.WEIGHT_DECAY_MODES


def _check(value: Any, choices: tuple, what: str) -> None:
  if value not in choices:
    raise ValueError(f"invalid {what} {value!r}; valid choices: {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer hyperparameters (global; μP multipliers come from the rules)."""
  name: str = "adam"
  lr: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  momentum: float = 0.0
  nesterov: bool = False
  weight_decay: float = 0.0
  weight_decay_mode: str = "decoupled"
  decay_vectors: bool = False
  schedule: str = "constant"
  warmup_steps: int = 0
  total_steps: int = 0
  min_lr_ratio: float = 0.0
  grad_clip_norm: float | None = None

  def __post_init__(self):
    _check(self.name, NAMES, "optimizer name")
    _check(self.schedule, SCHEDULES, "schedule")
    _check(self.weight_decay_mode, WEIGHT_DECAY_MODES, "weight_decay_mode")
    if not self.lr > 0:
      raise ValueError(f"lr must be > 0, got {self.lr!r}")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
    if self.schedule in ("cosine", "linear", "warmup_cosine", "warmup_linear") and (
        self.total_steps <= self.warmup_steps):
      raise ValueError(f"schedule {self.schedule!r} needs total_steps > warmup_steps, got "
                       f"total_steps={self.total_steps!r}, warmup_steps={self.warmup_steps!r}")
    if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
      raise ValueError(f"grad_clip_norm must be None or > 0, got {self.grad_clip_norm!r}")


def schedule_shape(cfg: OptimizerConfig) -> optax.Schedule:
  """The schedule's shape s(t) with peak 1; the learning rate at step t is ``cfg.lr * s(t)``."""
  w, total, lo = cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio
  if cfg.schedule in ("cosine", "linear"):
    w = 0

  def shape(count):
    t = jnp.asarray(count, jnp.float32)
    warm = (t + 1.0) / max(w, 1)
    if cfg.schedule == "constant":
      after = jnp.float32(1.0)
    elif cfg.schedule == "rsqrt":
      after = jnp.sqrt(max(w, 1) / (t + 1.0))
    else:
      frac = jnp.clip((t - w) / (total - w), 0.0, 1.0)
      if cfg.schedule.endswith("cosine"):
        after = lo + (1.0 - lo) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
      else:
        after = 1.0 + (lo - 1.0) * frac
    return jnp.where(t < w, warm, after) if w > 0 else after

  return shape


def _zip(fn, scales: Any, *trees: Any) -> Any:
  """``fn(scale, *leaves)`` where ``scales`` is a prefix of ``trees`` (None: scale 1.0).

  A prefix, so a rules tree whose leaves sit where the params tree has ``nnx.Param`` nodes
  (an ``nnx.State``) works as well as an exactly matching nested dict.
  """
  if scales is None:
    return jax.tree.map(lambda *xs: fn(1.0, *xs), *trees)
  try:
    return jax.tree.map(lambda k, *subs: jax.tree.map(lambda *xs: fn(k, *xs), *subs),
                        scales, *trees)
  except ValueError as e:
    raise ValueError(f"rules must be a pytree of ParamRule mirroring the params: {e}") from None


def _default_decay(params: Any, decay_vectors: bool) -> Any:
  """Without rules: decay parameters of rank >= 2 (and vectors if ``decay_vectors``)."""
  return jax.tree.map(lambda p: float(decay_vectors or jnp.ndim(p) >= 2), params)


class AdamState(NamedTuple):
  count: jax.Array
  mu: Any
  nu: Any


def scale_by_adam_per_param(b1: float, b2: float, eps: float, eps_scales: Any = None,
                            atan2: bool = False) -> optax.GradientTransformation:
  """Adam direction ``m̂/(sqrt(v̂) + eps·eps_scale_p)`` (or ``atan2(m̂, sqrt(v̂))``).

  ``eps_scales`` is a pytree of floats with the params' structure (None: all 1).
  """

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return AdamState(jnp.zeros([], jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    c1 = 1 - b1 ** count.astype(jnp.float32)
    c2 = 1 - b2 ** count.astype(jnp.float32)
    def direction(e, m, v):
      m_hat, v_hat = m / c1.astype(m.dtype), v / c2.astype(v.dtype)
      if atan2:
        return jnp.arctan2(m_hat, jnp.sqrt(v_hat))
      return m_hat / (jnp.sqrt(v_hat) + jnp.asarray(eps * e, m.dtype))

    out = _zip(direction, eps_scales, mu, nu)
    return out, AdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def _add_decay(wd: float, scales: Any, decay_vectors: bool) -> optax.GradientTransformation:
  """``u += wd·scale_p·θ_p`` (needs params); ``scales`` None: see ``_default_decay``."""

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("weight decay needs params: call update(grads, state, params)")
    if scales is None:
      return jax.tree.map(lambda u, p: u + wd * float(decay_vectors or p.ndim >= 2) * p,
                          updates, params), state
    return _zip(lambda k, u, p: u + (wd * k) * p, scales, updates, params), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


class RuleScaleState(NamedTuple):
  count: jax.Array


def _scale_by_rules(cfg: OptimizerConfig, lr_scales: Any, wd_scales: Any,
                    independent: bool) -> optax.GradientTransformation:
  """``-lr·s(t)·lr_scale_p·u_p`` [``- s(t)·wd·wd_scale_p·θ_p`` for independent decay]."""
  shape = schedule_shape(cfg)

  def update(updates, state, params=None):
    s = shape(state.count)
    out = _zip(lambda k, u: (-cfg.lr * k * s).astype(u.dtype) * u, lr_scales, updates)
    if independent:
      if params is None:
        raise ValueError("weight decay needs params: call update(grads, state, params)")
      ws = wd_scales if wd_scales is not None else _default_decay(params, cfg.decay_vectors)
      out = _zip(lambda k, u, p: u - (cfg.weight_decay * k * s).astype(u.dtype) * p,
                 ws, out, params)
    return out, RuleScaleState(optax.safe_increment(state.count))

  return optax.GradientTransformation(lambda _: RuleScaleState(jnp.zeros([], jnp.int32)), update)


def make_optimizer(cfg: OptimizerConfig, rules: Any = None) -> optax.GradientTransformation:
  """Builds the optimizer; ``rules``: pytree of ``ParamRule`` mirroring the params, or None."""
  if not isinstance(cfg, OptimizerConfig):
    raise TypeError(f"cfg must be an OptimizerConfig, got {type(cfg).__name__}")
  lr_s = eps_s = wd_s = None
  if rules is not None:
    lr_s = mup.lr_multipliers(rules)
    eps_s = mup.eps_multipliers(rules)
    wd_s = jax.tree.map(lambda r: r.wd_scale * float(cfg.decay_vectors or r.role != "vector"),
                        rules, is_leaf=mup.is_rule)
  mode = cfg.weight_decay_mode if cfg.weight_decay != 0.0 else None
  chain = []
  if cfg.grad_clip_norm is not None:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if mode == "coupled":
    chain.append(_add_decay(cfg.weight_decay, wd_s, cfg.decay_vectors))
  if cfg.name in ("adam", "adamw", "adam_atan2"):
    chain.append(scale_by_adam_per_param(cfg.b1, cfg.b2, cfg.eps, eps_s,
                                         atan2=cfg.name == "adam_atan2"))
  elif cfg.name == "lion":
    chain.append(optax.scale_by_lion(b1=cfg.b1, b2=cfg.b2))
  elif cfg.momentum:
    chain.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
  if mode == "decoupled":
    chain.append(_add_decay(cfg.weight_decay, wd_s, cfg.decay_vectors))
  chain.append(_scale_by_rules(cfg, lr_s, wd_s, mode == "independent"))
  return optax.chain(*chain)
