"""Aggregators with extra structure: CAGrad, Aligned-MTL, Nash-MTL (stateful), GradDrop (random,
element-wise, not Gramian-expressible).

All run inside `jax.jit` with fixed-shape, capped-iteration solvers from `jaxmtl.mtl.qp`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxmtl import rng
from jaxmtl.mtl import qp
from jaxmtl.mtl.aggregators.base import (Aggregator, PyTree, check_pref_vector,
                                         normalize_gramian, num_tasks, pref_weights,
                                         regularize_gramian)

__all__ = [
    "CAGrad", "AlignedMTL", "NashMTL", "GradDrop", "graddrop_update", "cagrad_direction",
    "cagrad_weights", "aligned_mtl_weights", "nash_weights",
]


def _check_choice(name: str, value: Any, choices: tuple) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


@functools.partial(jax.jit, static_argnames=("bisection_steps",))
def cagrad_direction(gn: jax.Array, b: jax.Array, radius: jax.Array,
                     bisection_steps: int = 50) -> jax.Array:
  """Minimiser over the simplex of ``w^T G b + radius * sqrt(w^T G w)``, ``[tasks]``.

  This is the CAGrad dual (arXiv 2110.14048, Eq. 5). Its optimum is the simplex-QP minimiser of
  ``w^T G b + mu/2 w^T G w`` for the ``mu`` with ``mu * ||J^T w(mu)|| = radius``; that product is
  non-decreasing in ``mu``, so ``log mu`` is found by bisection on ``[-20, 30]``, each step an
  exact active-set QP. ``gn`` should be trace-normalised.
  """
  n = gn.shape[0]
  q = gn @ b
  ridge = 16 * jnp.finfo(gn.dtype).eps * jnp.eye(n, dtype=gn.dtype)

  def w_of(log_mu):
    mu = jnp.exp(log_mu)
    return qp.simplex_qp(mu * gn + ridge, q)

  def psi(log_mu):
    w = w_of(log_mu)
    return jnp.exp(log_mu) * jnp.sqrt(jnp.maximum(w @ gn @ w, 0.0))

  def step(_, lohi):
    lo, hi = lohi
    mid = 0.5 * (lo + hi)
    below = psi(mid) < radius
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  lo, hi = jax.lax.fori_loop(0, bisection_steps, step,
                             (jnp.array(-20.0, gn.dtype), jnp.array(30.0, gn.dtype)))
  return w_of(0.5 * (lo + hi))


@dataclasses.dataclass(frozen=True)
class CAGrad(Aggregator):
  """Conflict-Averse Gradient descent.

  Paper: Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", arXiv 2110.14048,
  Algorithm 1: ``d = g0 + (c ||g0|| / ||g_w||) g_w`` with ``w`` minimising
  ``g_w^T g0 + c ||g0|| ||g_w||`` over the simplex, ``g0`` the mean gradient.

  Options:
    c: radius scale (``c = 0`` is the mean).
    convention: ``"torchjd"`` (torchjd ``CAGrad``: solve on ``G / trace(G)``; weights 0 when
      ``||g_w|| < norm_eps`` on that scale; no rescaling by default) or ``"libmtl"`` (LibMTL
      ``CAGrad`` / the official Cranial-XIX code: ``c ||g0||`` computed as
      ``c sqrt(mean(G) + 1e-8) + 1e-8`` and ``lambda = that / (||g_w|| + 1e-8)`` on the raw
      Gramian; default ``rescale=1``).
    rescale: 0 (none), 1 (divide by ``1 + c^2``), 2 (divide by ``1 + c``), as LibMTL. ``None``
      picks the convention's default (torchjd 0, libmtl 1).
  The inner problem is solved exactly (bisection on the multiplier + active-set QP) where the
  references call Clarabel (torchjd) or SLSQP (LibMTL).

  Robustness: all-zero ``J`` or a Pareto-stationary ``J`` (``||g_w|| < norm_eps`` after trace
  normalisation) gives weights 0 in both conventions (LibMTL would divide by ``1e-8`` instead).
  """

  c: float = 0.5
  convention: str = "torchjd"
  rescale: int | None = None
  norm_eps: float = 1e-4

  def __post_init__(self):
    if not isinstance(self.c, (int, float)) or self.c < 0:
      raise ValueError(f"c must be a float >= 0, got {self.c!r}.")
    _check_choice("convention", self.convention, ("torchjd", "libmtl"))
    if self.rescale is not None:
      _check_choice("rescale", self.rescale, (0, 1, 2))

  def _weights(self, g, state, key):
    if self.c == 0:
      return jnp.full((g.shape[0],), 1.0 / g.shape[0], g.dtype), state
    rescale = self.rescale if self.rescale is not None else (0 if self.convention == "torchjd"
                                                             else 1)
    divisor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[rescale]
    w = cagrad_weights(g, self.c, self.norm_eps, divisor, self.convention == "libmtl")
    return w, state


@jax.jit
def cagrad_weights(g: jax.Array, c: float, norm_eps: float, divisor: float,
                   libmtl: bool | jax.Array = False) -> jax.Array:
  """CAGrad weights ``[tasks]`` from the Gramian ``[tasks, tasks]`` (see `CAGrad`).

  ``libmtl`` is traced (both conventions share one compiled kernel).
  """
  n = g.shape[0]
  b = jnp.full((n,), 1.0 / n, g.dtype)
  gn = normalize_gramian(g, jnp.where(libmtl, jnp.finfo(g.dtype).tiny, norm_eps))
  radius = c * jnp.sqrt(jnp.maximum(b @ gn @ b, 0.0))
  w = cagrad_direction(gn, b, radius)
  gw = jnp.sqrt(jnp.maximum(w @ gn @ w, 0.0))
  ok = gw >= norm_eps
  cc = c * jnp.sqrt(jnp.mean(g) + 1e-8) + 1e-8
  lam_libmtl = cc / (jnp.sqrt(jnp.maximum(w @ g @ w, 0.0)) + 1e-8)
  lam_torchjd = radius / jnp.where(ok, gw, 1.0)
  lam = jnp.where(libmtl, lam_libmtl, lam_torchjd)
  return jnp.where(ok, b + lam * w, 0.0) / divisor


@dataclasses.dataclass(frozen=True)
class AlignedMTL(Aggregator):
  """Aligned-MTL: align the principal components of the Jacobian (condition number 1).

  Paper: Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023,
  arXiv 2305.19000. ``G = V diag(l) V^T`` (eigenvalues above ``max(l) * tasks * eps``),
  ``B = sqrt(scale) V diag(l^-1/2) V^T``, ``w = B pref``.

  Options:
    scale_mode: ``"min"`` (smallest kept eigenvalue, the paper's and default), ``"median"`` (lower
      median, as torch.median) or ``"rmse"`` (mean) — torchjd ``AlignedMTL``.
    convention: ``"torchjd"`` (``pref`` defaults to ``1/tasks``, ``eps`` of the Gramian's dtype;
      rank 0 gives ``B = I``) or ``"libmtl"`` (LibMTL ``Aligned_MTL``: ``w = B 1``, i.e. ``tasks``
      times the torchjd weights, with float32 ``eps``; ``scale_mode`` must be ``"min"`` and
      ``pref_vector`` None).

  Robustness: rank-deficient ``G`` uses only the kept eigenpairs; all-zero ``J`` gives
  ``w = pref`` (torchjd ``B = I``) and a zero update.
  """

  pref_vector: tuple[float, ...] | None = None
  scale_mode: str = "min"
  convention: str = "torchjd"

  def __post_init__(self):
    object.__setattr__(self, "pref_vector", check_pref_vector(self.pref_vector))
    _check_choice("scale_mode", self.scale_mode, ("min", "median", "rmse"))
    _check_choice("convention", self.convention, ("torchjd", "libmtl"))
    if self.convention == "libmtl" and (self.scale_mode != "min" or self.pref_vector is not None):
      raise ValueError("convention='libmtl' supports only scale_mode='min' and pref_vector=None, "
                       f"got scale_mode={self.scale_mode!r}, pref_vector={self.pref_vector!r}.")

  def _weights(self, g, state, key):
    n = g.shape[0]
    if self.convention == "libmtl":
      pref = jnp.ones((n,), g.dtype)
      eps = float(jnp.finfo(jnp.float32).eps)
    else:
      pref = pref_weights(self.pref_vector, n, g.dtype)
      eps = float(jnp.finfo(g.dtype).eps)
    mode = ("min", "median", "rmse").index(self.scale_mode)
    return aligned_mtl_weights(g, pref, eps, mode), state


@jax.jit
def aligned_mtl_weights(g: jax.Array, pref: jax.Array, eps: float,
                        scale_mode: int | jax.Array = 0) -> jax.Array:
  """Aligned-MTL weights ``B pref`` (``[tasks]``) from the Gramian (see `AlignedMTL`).

  ``scale_mode``: 0 min, 1 median, 2 rmse (traced, one compiled kernel for all three).
  """
  n = g.shape[0]
  lam, v = jnp.linalg.eigh(g)  # ascending
  keep = lam > jnp.max(lam) * n * eps
  rank = jnp.sum(keep)
  first = n - rank  # index of the smallest kept eigenvalue
  smallest = lam[jnp.minimum(first, n - 1)]
  median = lam[jnp.minimum(first + (rank - 1) // 2, n - 1)]  # torch.median: lower middle value
  mean = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1)
  scale = jnp.stack([smallest, median, mean])[scale_mode]
  inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
  bmat = jnp.sqrt(jnp.maximum(scale, 0.0)) * (v * inv_sqrt) @ v.T
  bmat = jnp.where(rank == 0, jnp.eye(n, dtype=g.dtype), bmat)
  return bmat @ pref


@dataclasses.dataclass(frozen=True)
class NashMTL(Aggregator):
  """Nash-MTL: the Nash bargaining solution ``G a = 1 / a``, ``a > 0``.

  Paper: Navon et al., "Multi-Task Learning as a Bargaining Game", arXiv 2202.01017, Algorithm 1.
  Reference: torchjd ``NashMTL`` (adapted from AvivNavon/nash-mtl): the Gramian is divided by its
  Frobenius norm, the weights are recomputed every ``update_weights_every`` calls (reused
  otherwise), warm-started from the previous solution, and ``J^T a`` is clipped to norm
  ``max_norm`` (0 disables). The references run up to 20 convex-concave steps with cvxpy/ECOS;
  here damped Newton on ``1/2 a^T G a - sum(log a)`` (`qp.nash_solve`) solves the same fixed point
  to machine precision. ``reg_eps`` (on the normalised Gramian) makes it well-posed for singular
  Gramians.

  State: ``{"alpha": [tasks], "step": int32}`` from `init` (alpha = ones, as torchjd).
  Robustness: a zero task gradient gets ``a_i = reg_eps^-1/2`` but contributes nothing; if 0 is
  in the convex hull of the gradients the update is (near) zero; all-zero ``J`` gives a zero
  update. No NaN in any of these cases.
  """

  max_norm: float = 1.0
  update_weights_every: int = 1
  reg_eps: float = 1e-6
  max_iters: int = 100

  stateful = True

  def __post_init__(self):
    if not isinstance(self.max_norm, (int, float)) or self.max_norm < 0:
      raise ValueError(f"max_norm must be a float >= 0, got {self.max_norm!r}.")
    if not isinstance(self.update_weights_every, int) or self.update_weights_every <= 0:
      raise ValueError(
          f"update_weights_every must be a positive int, got {self.update_weights_every!r}.")
    if not isinstance(self.reg_eps, (int, float)) or self.reg_eps <= 0:
      raise ValueError(f"reg_eps must be a float > 0, got {self.reg_eps!r}.")

  def init(self, num_tasks: int) -> dict[str, jax.Array]:
    """Initial state: ``alpha = ones([tasks])`` and ``step = 0``."""
    return {"alpha": jnp.ones((num_tasks,), jnp.float32), "step": jnp.zeros((), jnp.int32)}

  def _weights(self, g, state, key):
    n = g.shape[0]
    if state["alpha"].shape != (n,):
      raise ValueError(f"NashMTL state has alpha of shape {state['alpha'].shape}, Gramian has "
                       f"{n} tasks; call init({n}).")
    alpha, w = nash_weights(g, state["alpha"].astype(g.dtype), state["step"],
                            self.update_weights_every, self.reg_eps, self.max_norm,
                            max_iters=self.max_iters)
    return w, {"alpha": alpha.astype(state["alpha"].dtype), "step": state["step"] + 1}


@functools.partial(jax.jit, static_argnames=("max_iters",))
def nash_weights(g: jax.Array, prev: jax.Array, step: jax.Array, every: int, reg_eps: float,
                 max_norm: float, max_iters: int = 100) -> tuple[jax.Array, jax.Array]:
  """One Nash-MTL weighting step: returns (unclipped alpha for the state, clipped weights)."""
  fro = jnp.sqrt(jnp.sum(g * g))
  root = jnp.sqrt(jnp.where(fro > 0, fro, 1.0))

  def solve(_):
    # (G / fro) a' = 1 / a'  <=>  G a = 1 / a  with  a = a' / sqrt(fro).
    gn = jnp.where(fro > 0, g / root**2, 0.0)
    start = prev * root
    start = jnp.where(jnp.all(jnp.isfinite(start) & (start > 0)), start, jnp.ones_like(start))
    a = qp.nash_solve(regularize_gramian(gn, reg_eps), start, max_iters=max_iters)
    return a / root

  alpha = jax.lax.cond(step % every == 0, solve, lambda _: prev, None)
  norm = jnp.sqrt(jnp.maximum(alpha @ g @ alpha, 0.0))
  clip = (max_norm > 0) & (norm > max_norm)
  w = jnp.where(clip, alpha / jnp.where(norm > 0, norm, 1.0) * max_norm, alpha)
  return alpha, w


def graddrop_update(jacobian: PyTree, uniform: PyTree, leak: jax.Array | None = None,
                    f: Callable[[jax.Array], jax.Array] | None = None) -> PyTree:
  """GradDrop combination with explicit uniform draws (one per parameter, like one task's grad).

  ``P = (1 + sum_t J_t / sum_t |J_t|) / 2`` (positive sign purity; 1/2 where all are 0); task
  ``t`` keeps coordinate ``k`` if ``f(P_k) > U_k`` and ``J_tk > 0`` or ``f(P_k) < U_k`` and
  ``J_tk < 0``; the update is ``sum_t (leak_t + (1 - leak_t) mask_t) J_t`` (torchjd ``GradDrop``).
  """
  n = num_tasks(jacobian)
  leak = jnp.zeros((n,)) if leak is None else jnp.asarray(leak)

  def one(leaf, u):
    acc = jnp.promote_types(leaf.dtype, jnp.float32)
    # Row by row (x[t], never an op over the stacked [T, ...] leaf): XLA then reads the T
    # backward passes' outputs directly instead of materialising their stack (GradDrop@full,
    # T=3, tools/bench_mtl.py: see docs/benchmarks.md).
    rows = [leaf[t].astype(acc) for t in range(n)]
    s, a = rows[0], jnp.abs(rows[0])
    for r in rows[1:]:
      s, a = s + r, a + jnp.abs(r)
    p = 0.5 * (1.0 + s / jnp.where(a > 0, a, 1.0))
    fp = p if f is None else f(p)
    up, down = fp > u, fp < u
    lk = leak.astype(acc)
    out = jnp.zeros_like(s)
    for t, r in enumerate(rows):
      keep = (up & (r > 0)) | (down & (r < 0))
      out = out + (lk[t] + (1 - lk[t]) * keep.astype(acc)) * r
    return out.astype(leaf.dtype)

  return jax.tree_util.tree_map(one, jacobian, uniform)


@dataclasses.dataclass(frozen=True)
class GradDrop(Aggregator):
  """Gradient Sign Dropout.

  Paper: Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
  Dropout", arXiv 2010.06808, Algorithm 1 lines 10-15, applied to the parameter gradients as
  torchjd ``GradDrop`` does (``f`` identity by default, ``leak`` per task, default 0).
  Needs ``key``: one uniform draw per parameter, leaf ``i`` of the pytree uses
  ``jax.random.fold_in(key, i)``; ``uniform="hash"`` (default) draws them with the
  counter-based hash of :mod:`jaxmtl.rng` (about 0.1x the cost of threefry on CPU),
  ``uniform="jax"`` with ``jax.random.uniform`` (the configured PRNG implementation).
  Element-wise, so not Gramian-expressible: `weights` raises and ``__call__`` returns
  ``weights=None``.

  Robustness: coordinates where every task is 0 stay 0; zero rows are never kept or leaked.
  """

  leak: tuple[float, ...] | None = None
  f: Callable[[jax.Array], jax.Array] | None = None
  uniform: str = "hash"

  needs_key = True

  def __post_init__(self):
    object.__setattr__(self, "leak", check_pref_vector(self.leak, "leak"))
    if self.uniform not in rng.UNIFORMS:
      raise ValueError(f"uniform must be one of {sorted(rng.UNIFORMS)}, got {self.uniform!r}.")
    if self.f is not None and not callable(self.f):
      raise TypeError(f"f must be callable or None, got {self.f!r}.")

  def weights(self, gramian, *, state=None, key=None):
    raise TypeError("GradDrop is element-wise and has no Gramian weights; call it on the "
                    "Jacobian instead.")

  def __call__(self, jacobian: PyTree, *, state: Any = None, key: jax.Array | None = None,
               rows: bool = False) -> tuple[PyTree, None, Any]:
    del rows  # element-wise: reads the rows as they are either way
    if key is None:
      raise ValueError("GradDrop is randomised: pass key=jax.random.key(...).")
    n = num_tasks(jacobian)
    if self.leak is not None and len(self.leak) != n:
      raise ValueError(f"leak has {len(self.leak)} entries but the Jacobian has {n} tasks.")
    leaves, treedef = jax.tree_util.tree_flatten(jacobian)
    uniform = [rng.uniform(self.uniform, jax.random.fold_in(key, i), leaf.shape[1:],
                           jnp.promote_types(leaf.dtype, jnp.float32))
               for i, leaf in enumerate(leaves)]
    upd = graddrop_update(jacobian, jax.tree_util.tree_unflatten(treedef, uniform),
                          None if self.leak is None else jnp.asarray(self.leak), self.f)
    return upd, None, state

