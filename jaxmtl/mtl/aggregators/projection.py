"""Gramian-based aggregators: Mean, UPGrad, DualProj, MGDA, PCGrad, IMTL-G.

Each is a frozen dataclass whose `weights` maps the Gramian ``G = J J^T`` (``[tasks, tasks]``) to
task weights ``[tasks]`` inside `jax.jit`; calling it on a Jacobian returns ``(J^T w, w, state)``.
Conventions follow torchjd 0.18.0 (https://github.com/TorchJD/torchjd,
``src/torchjd/aggregation``) unless an option says otherwise.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxmtl.mtl import qp
from jaxmtl.mtl.aggregators.base import (Aggregator, check_pref_vector, normalize_gramian,
                                         pref_weights, regularize_gramian)

__all__ = [
    "Mean", "UPGrad", "DualProj", "MGDA", "PCGrad", "IMTLG", "dual_cone_weights",
    "mgda_frank_wolfe", "min_norm_weights", "pcgrad_weights", "imtlg_weights",
]


@dataclasses.dataclass(frozen=True)
class Mean(Aggregator):
  """Average of the task gradients: ``w = 1/tasks`` (torchjd ``Mean``).

  Robustness: any Jacobian (zero rows, singular Gramian) gives the plain average.
  """

  def _weights(self, g, state, key):
    n = g.shape[0]
    return jnp.full((n,), 1.0 / n, g.dtype), state


@functools.partial(jax.jit, static_argnames=("max_iters",))
def dual_cone_weights(g: jax.Array, u: jax.Array, norm_eps: float, reg_eps: float,
                      max_iters: int | None = None) -> jax.Array:
  """Weights ``v`` of the projections of ``J^T u_k`` onto the dual cone of the rows of ``J``.

  Solves ``min_v v^T G' v  s.t.  v >= u_k`` (Proposition 1 of arXiv 2406.16232) with
  ``G' = normalize(G, norm_eps) + reg_eps I`` as torchjd's ``QuadprogProjector`` does. ``g``:
  ``[tasks, tasks]``; ``u``: ``[k, tasks]``; returns ``[k, tasks]``. Substituting ``x = v - u``
  gives a non-negative QP (`qp.nonneg_qp`).
  """
  q = regularize_gramian(normalize_gramian(g, norm_eps), reg_eps)
  return jax.vmap(lambda ui: ui + qp.nonneg_qp(q, q @ ui, max_iters=max_iters))(u)


def _check_eps(name: str, value: float, strict: bool = False) -> float:
  if not isinstance(value, (int, float)) or value < 0 or (strict and value == 0):
    bound = "> 0" if strict else ">= 0"
    raise ValueError(f"{name} must be a float {bound}, got {value!r}.")
  return float(value)


@dataclasses.dataclass(frozen=True)
class UPGrad(Aggregator):
  """Unconflicting Projection of Gradients.

  Paper: Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232.
  Reference: torchjd ``UPGrad`` with ``QuadprogProjector(norm_eps=1e-4, reg_eps=1e-4)``: each row
  ``g_i`` (weighted by ``pref_vector``, default ``1/tasks``) is projected onto the dual cone
  ``{x : J x >= 0}`` by solving ``min_v v^T G' v  s.t.  v >= pref_i e_i`` with
  ``G' = G / trace(G) + reg_eps I`` (``G' = reg_eps I`` if ``trace(G) < norm_eps``); the weights
  are the sum of the ``v``'s. torchjd uses quadprog; here an exact active-set solver runs in jit.

  Guarantee: ``J J^T w >= 0`` up to the ``reg_eps`` regularisation (no task conflicts).
  Robustness: zero rows, duplicate rows and the all-zero Jacobian are handled by the
  regularisation (all-zero ``J``: ``w = pref``, update 0). ``reg_eps`` must be ``> 0`` (torchjd
  allows 0 for positive-definite Gramians; in jit definiteness cannot be checked).
  """

  pref_vector: tuple[float, ...] | None = None
  norm_eps: float = 1e-4
  reg_eps: float = 1e-4
  max_iters: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "pref_vector", check_pref_vector(self.pref_vector))
    _check_eps("norm_eps", self.norm_eps)
    _check_eps("reg_eps", self.reg_eps, strict=True)

  def _weights(self, g, state, key):
    u = jnp.diag(pref_weights(self.pref_vector, g.shape[0], g.dtype))
    v = dual_cone_weights(g, u, self.norm_eps, self.reg_eps, max_iters=self.max_iters)
    return jnp.sum(v, axis=0), state


@dataclasses.dataclass(frozen=True)
class DualProj(Aggregator):
  """Projection of the (preference-weighted) mean gradient onto the dual cone of the rows.

  Paper: Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning" (Eq. 11,
  arXiv 1706.08840), as used in Quinton & Rey, arXiv 2406.16232. Reference: torchjd ``DualProj``
  (same QP, ``norm_eps`` and ``reg_eps`` as `UPGrad`, but a single projection of ``J^T pref``).

  Guarantee and robustness: as `UPGrad`.
  """

  pref_vector: tuple[float, ...] | None = None
  norm_eps: float = 1e-4
  reg_eps: float = 1e-4
  max_iters: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "pref_vector", check_pref_vector(self.pref_vector))
    _check_eps("norm_eps", self.norm_eps)
    _check_eps("reg_eps", self.reg_eps, strict=True)

  def _weights(self, g, state, key):
    u = pref_weights(self.pref_vector, g.shape[0], g.dtype)
    # Row 0 carries u; the zero rows are solved trivially and share UPGrad's compiled kernel.
    rows = jnp.zeros((u.shape[0], u.shape[0]), u.dtype).at[0].set(u)
    v = dual_cone_weights(g, rows, self.norm_eps, self.reg_eps, max_iters=self.max_iters)
    return v[0], state


@jax.jit
def mgda_frank_wolfe(g: jax.Array, epsilon: float, max_iters: int) -> jax.Array:
  """Frank-Wolfe min-norm solver, Algorithm 2 of arXiv 1810.04650, as in torchjd ``MGDAWeighting``.

  Starts at ``1/tasks``; stops after the first step whose ``gamma < epsilon`` (that step is still
  applied) or after ``max_iters`` steps.
  """
  n = g.shape[0]

  def body(carry):
    alpha, it, _ = carry
    ga = g @ alpha
    t = jnp.argmin(ga)
    e_t = jax.nn.one_hot(t, n, dtype=g.dtype)
    a = alpha @ g[:, t]
    b = alpha @ ga
    c = g[t, t]
    denom = b + c - 2 * a
    gamma = jnp.where(c <= a, 1.0, jnp.where(b <= a, 0.0, (b - a) / jnp.where(
        denom == 0, 1.0, denom)))
    alpha = (1 - gamma) * alpha + gamma * e_t
    return alpha, it + 1, gamma < epsilon

  def cond(carry):
    _, it, done = carry
    return (~done) & (it < max_iters)

  alpha0 = jnp.full((n,), 1.0 / n, g.dtype)
  alpha, _, _ = jax.lax.while_loop(cond, body, (alpha0, jnp.array(0), jnp.array(False)))
  return alpha


def _ridge(dtype) -> float:
  return 16 * float(jnp.finfo(dtype).eps)


@functools.partial(jax.jit, static_argnames=("max_iters",))
def min_norm_weights(g: jax.Array, max_iters: int | None = None) -> jax.Array:
  """Exact min-norm element of the convex hull of the rows: ``argmin_{w in simplex} w^T G w``.

  Solved on ``G / trace(G) + 16 eps I``. The min-norm point ``J^T w`` is unique; the weights need
  not be (duplicate rows: the active-set method keeps the first copy it reaches). All-zero ``G``
  gives ``1/tasks``.
  """
  q = regularize_gramian(normalize_gramian(g, float(jnp.finfo(g.dtype).tiny)), _ridge(g.dtype))
  return qp.simplex_qp(q, jnp.zeros(g.shape[0], g.dtype), max_iters=max_iters)


@dataclasses.dataclass(frozen=True)
class MGDA(Aggregator):
  """Multiple-Gradient Descent Algorithm: the min-norm point of the convex hull of the gradients.

  Paper: Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", arXiv 1810.04650
  (Désidéri 2012 for MGDA). Options:

  * ``solver="frank_wolfe"`` (default, reference torchjd ``MGDA``): Algorithm 2 of the paper with
    torchjd's ``epsilon=1e-3``, ``max_iters=100``; deterministic, matches torchjd step for step.
  * ``solver="exact"``: the exact simplex-QP minimiser by an in-jit active-set method.

  Guarantee (exact): ``J J^T w >= ||J^T w||^2 >= 0`` — no task conflicts.
  Robustness: a zero task gradient gives the zero update (it is the min-norm point); with
  duplicate rows the update is unique but the weight may sit on one copy; all-zero ``J`` gives
  ``w = 1/tasks`` (exact; Frank-Wolfe gives a vertex) and a zero update.
  """

  solver: str = "frank_wolfe"
  epsilon: float = 1e-3
  max_iters: int = 100

  def __post_init__(self):
    if self.solver not in ("frank_wolfe", "exact"):
      raise ValueError(f"MGDA solver must be 'frank_wolfe' or 'exact', got {self.solver!r}.")
    _check_eps("epsilon", self.epsilon, strict=True)
    if not isinstance(self.max_iters, int) or self.max_iters <= 0:
      raise ValueError(f"max_iters must be a positive int, got {self.max_iters!r}.")

  def _weights(self, g, state, key):
    if self.solver == "exact":
      return min_norm_weights(g), state
    return mgda_frank_wolfe(g, self.epsilon, self.max_iters), state


@jax.jit
def pcgrad_weights(g: jax.Array, permutations: jax.Array) -> jax.Array:
  """PCGrad weights from the Gramian and one projection order per task.

  Mirrors torchjd ``PCGradWeighting``: for task ``i`` start from ``e_i`` and, for each ``j`` of
  ``permutations[i]`` (``j != i``), if ``<g_i^PC, g_j> < 0`` subtract its projection on ``g_j``;
  the weights are the sum over ``i``. ``g``: ``[tasks, tasks]``; ``permutations``: ``[tasks,
  tasks]`` integer rows, each a permutation of ``range(tasks)``.
  """
  n = g.shape[0]
  diag = jnp.diag(g)

  def one(i, perm):
    def step(k, cw):
      j = perm[k]
      ip = g[j] @ cw
      delta = jnp.where((ip < 0) & (j != i) & (diag[j] > 0), ip / jnp.where(
          diag[j] > 0, diag[j], 1.0), 0.0)
      return cw.at[j].add(-delta)
    return jax.lax.fori_loop(0, n, step, jax.nn.one_hot(i, n, dtype=g.dtype))

  return jnp.sum(jax.vmap(one)(jnp.arange(n), permutations), axis=0)


@dataclasses.dataclass(frozen=True)
class PCGrad(Aggregator):
  """Projecting Conflicting Gradients (gradient surgery), in Gramian form.

  Paper: Yu et al., "Gradient Surgery for Multi-Task Learning", arXiv 2001.06782, Algorithm 1.
  Reference: torchjd ``PCGrad`` (a fresh random order of the other tasks for every task ``i``,
  the projections accumulate on task ``i``'s copy; the result is summed, not averaged).
  The orders come from ``key`` (``tasks`` permutations from ``jax.random.split(key, tasks)``) or
  from the static ``permutations`` option (``tasks`` tuples), which takes precedence.

  Robustness: a zero task gradient is never projected on (its inner products are 0); all-zero
  ``J`` gives ``w = 1`` and a zero update.
  """

  permutations: tuple[tuple[int, ...], ...] | None = None

  def __post_init__(self):
    if self.permutations is not None:
      perms = tuple(tuple(int(j) for j in p) for p in self.permutations)
      n = len(perms)
      if any(sorted(p) != list(range(n)) for p in perms):
        raise ValueError(
            f"permutations must be {n} permutations of range({n}), got {self.permutations!r}.")
      object.__setattr__(self, "permutations", perms)

  @property
  def needs_key(self) -> bool:  # type: ignore[override]
    return self.permutations is None

  def _weights(self, g, state, key):
    n = g.shape[0]
    if self.permutations is not None:
      if len(self.permutations) != n:
        raise ValueError(f"permutations has {len(self.permutations)} rows, Gramian has {n} tasks.")
      perms = jnp.asarray(self.permutations, jnp.int32)
    else:
      perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, n))
    return pcgrad_weights(g, perms), state


@dataclasses.dataclass(frozen=True)
class IMTLG(Aggregator):
  """Impartial MTL, gradient balancing (IMTL-G), in the generalised form of torchjd.

  Paper: Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021
  (https://openreview.net/forum?id=IMPnRXEWpvr); generalisation to linearly dependent rows in
  Quinton & Rey, arXiv 2406.16232. Reference: torchjd ``IMTLG``: ``v = pinv(G) sqrt(diag G)``,
  ``w = v / sum(v)``, or ``w = 0`` where ``|sum(v)| < 1e-12``. The pseudo-inverse cut-off is
  torch's default ``tasks * eps * max singular value``.

  Guarantee: the update has equal projections onto every task's unit gradient (full-rank ``J``).
  Robustness: all-zero ``J`` gives ``w = 0``; zero rows get weight 0 (not in ``G``'s range).
  """

  def _weights(self, g, state, key):
    return imtlg_weights(g), state


@jax.jit
def imtlg_weights(g: jax.Array) -> jax.Array:
  """IMTL-G weights ``[tasks]`` from the Gramian ``[tasks, tasks]`` (see `IMTLG`)."""
  n = g.shape[0]
  d = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
  rtol = n * jnp.finfo(g.dtype).eps
  v = jnp.linalg.pinv(g, rtol=rtol, hermitian=True) @ d
  s = jnp.sum(v)
  small = jnp.abs(s) < 1e-12
  return jnp.where(small, 0.0, v / jnp.where(small, 1.0, s))
