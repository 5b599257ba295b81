"""Small dense solvers that run entirely inside `jax.jit` (no host round trips).

They serve the gradient aggregators of `jaxmtl.mtl.aggregators`, whose problems live in the
`[tasks, tasks]` Gramian space (a handful to a few dozen variables):

* `nonneg_qp`: ``min_x 1/2 x^T Q x + c^T x  s.t. x >= 0`` with ``Q`` positive definite — a
  primal active-set method in the style of Lawson & Hanson's NNLS ("Solving Least Squares
  Problems", 1974, ch. 23). Used by UPGrad / DualProj (dual-cone projection, arXiv 2406.16232),
  which the reference torchjd solves with quadprog; the active-set method terminates at the exact
  solution (up to rounding) in a few more iterations than there are tasks.
* `simplex_qp`: ``min_w 1/2 w^T Q w + c^T w  s.t. w >= 0, sum(w) = 1`` with ``Q`` positive
  semi-definite — a primal active-set method on the equality-constrained KKT system. Used by the
  exact MGDA min-norm solver (arXiv 1810.04650) and the CAGrad inner problem (arXiv 2110.14048).
* `nash_solve`: the positive solution of ``Q a = 1 / a`` (Nash-MTL, arXiv 2202.01017) as the
  minimiser of the self-concordant ``1/2 a^T Q a - sum(log a)`` by damped Newton steps.

All loops are `jax.lax.while_loop` with a fixed iteration cap; each solver is jitted (compiled once
per shape and dtype when called eagerly, inlined under an outer `jax.jit`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["nonneg_qp", "simplex_qp", "nash_solve"]


def _masked_matrix(q: jax.Array, free: jax.Array) -> jax.Array:
  """``Q`` restricted to the free set, identity on the fixed variables. ``[n, n]``."""
  both = free[:, None] & free[None, :]
  return jnp.where(both, q, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0).astype(q.dtype))


@functools.partial(jax.jit, static_argnames=("max_iters",))
def nonneg_qp(q: jax.Array, c: jax.Array, *, max_iters: int | None = None,
              tol: float | None = None) -> jax.Array:
  """Solves ``min_x 1/2 x^T Q x + c^T x`` subject to ``x >= 0``.

  Primal active-set method (Lawson-Hanson NNLS generalised to a quadratic form). Each iteration
  solves the unconstrained problem on the free set; if that point is feasible it becomes the
  iterate and the most negative gradient component enters the free set, otherwise the iterate
  moves towards it until a free variable hits zero and leaves.

  Args:
    q: ``[n, n]`` symmetric positive definite matrix.
    c: ``[n]`` linear term.
    max_iters: iteration cap (default ``4 n + 10``; exact termination usually takes ``<= 2 n``).
    tol: optimality tolerance on the gradient (default
      ``16 eps (max|diag Q| (1 + max|x|) + max|c|)``, i.e. a few roundings of the gradient).

  Returns:
    ``[n]`` minimiser, exactly zero on the active constraints.
  """
  n = c.shape[0]
  dtype = q.dtype
  max_iters = 4 * n + 10 if max_iters is None else max_iters
  eps = jnp.finfo(dtype).eps
  qmax, cmax = jnp.max(jnp.abs(jnp.diag(q))), jnp.max(jnp.abs(c))

  def body(carry):
    x, free, it, _ = carry
    z = jnp.linalg.solve(_masked_matrix(q, free), jnp.where(free, -c, 0.0))
    z = jnp.where(free, z, 0.0)
    feasible = jnp.all(jnp.where(free, z > 0, True))
    # Feasible: accept z, then add the most violating variable (or stop).
    grad = q @ z + c
    tol_k = 16 * eps * (qmax * (1 + jnp.max(jnp.abs(z))) + cmax) if tol is None else tol
    viol = jnp.where(free, jnp.inf, grad)
    j = jnp.argmin(viol)
    add = viol[j] < -tol_k
    free_feas = free.at[j].set(free[j] | add)
    # Infeasible: step towards z until the first free variable reaches zero; drop it.
    blocking = free & (z <= 0)
    ratios = jnp.where(blocking, x / jnp.where(blocking, x - z, 1.0), jnp.inf)
    k = jnp.argmin(ratios)
    alpha = jnp.clip(ratios[k], 0.0, 1.0)
    x_step = x + alpha * (z - x)
    free_inf = free & (x_step > 0) & (jnp.arange(n) != k)
    x_step = jnp.where(free_inf, x_step, 0.0)
    x_new = jnp.where(feasible, z, x_step)
    free_new = jnp.where(feasible, free_feas, free_inf)
    done = feasible & ~add
    return x_new, free_new, it + 1, done

  def cond(carry):
    _, _, it, done = carry
    return (~done) & (it < max_iters)

  init = (jnp.zeros((n,), dtype), jnp.zeros((n,), bool), jnp.array(0), jnp.array(False))
  x, _, _, _ = jax.lax.while_loop(cond, body, init)
  return x


@functools.partial(jax.jit, static_argnames=("max_iters",))
def simplex_qp(q: jax.Array, c: jax.Array, *, max_iters: int | None = None,
               tol: float | None = None) -> jax.Array:
  """Solves ``min_w 1/2 w^T Q w + c^T w`` subject to ``w >= 0, sum(w) = 1``.

  Primal active-set method started at the best vertex. Each iteration solves the KKT system
  ``[[Q_FF, 1], [1^T, 0]] [z; nu] = [-c_F; 1]`` on the free set ``F``. ``Q`` may be singular
  (duplicate or zero task gradients); callers add an ``eps``-sized ridge so the KKT systems stay
  solvable. With a singular ``Q`` the minimiser may not be unique; any minimiser is returned.

  Args:
    q: ``[n, n]`` symmetric positive semi-definite matrix (positive definite on the simplex's
      tangent space for a unique minimiser).
    c: ``[n]`` linear term.
    max_iters: iteration cap (default ``4 n + 10``).
    tol: optimality tolerance on the Lagrange multipliers (default as `nonneg_qp`).

  Returns:
    ``[n]`` minimiser on the probability simplex.
  """
  n = c.shape[0]
  dtype = q.dtype
  max_iters = 4 * n + 10 if max_iters is None else max_iters
  eps = jnp.finfo(dtype).eps
  qmax, cmax = jnp.max(jnp.abs(jnp.diag(q))), jnp.max(jnp.abs(c))
  j0 = jnp.argmin(0.5 * jnp.diag(q) + c)
  w0 = jnp.zeros((n,), dtype).at[j0].set(1.0)
  free0 = jnp.zeros((n,), bool).at[j0].set(True)

  def body(carry):
    w, free, it, _ = carry
    ones = free.astype(dtype)
    kkt = jnp.zeros((n + 1, n + 1), dtype)
    kkt = kkt.at[:n, :n].set(_masked_matrix(q, free))
    kkt = kkt.at[:n, n].set(ones).at[n, :n].set(ones)
    rhs = jnp.concatenate([jnp.where(free, -c, 0.0), jnp.ones((1,), dtype)])
    sol = jnp.linalg.solve(kkt, rhs)
    z = jnp.where(free, sol[:n], 0.0)
    feasible = jnp.all(jnp.where(free, z >= 0, True))
    grad = q @ z + c
    level = jnp.sum(jnp.where(free, grad, 0.0)) / jnp.maximum(jnp.sum(ones), 1.0)
    viol = jnp.where(free, jnp.inf, grad - level)
    tol_k = 16 * eps * (qmax * (1 + jnp.max(jnp.abs(z))) + cmax) if tol is None else tol
    j = jnp.argmin(viol)
    add = viol[j] < -tol_k
    free_feas = free.at[j].set(free[j] | add)
    blocking = free & (z < 0)
    ratios = jnp.where(blocking, w / jnp.where(blocking, w - z, 1.0), jnp.inf)
    k = jnp.argmin(ratios)
    alpha = jnp.clip(ratios[k], 0.0, 1.0)
    w_step = w + alpha * (z - w)
    free_inf = free & (w_step > 0) & (jnp.arange(n) != k)
    w_step = jnp.where(free_inf, w_step, 0.0)
    w_step = w_step / jnp.sum(w_step)
    w_new = jnp.where(feasible, jnp.maximum(z, 0.0), w_step)
    free_new = jnp.where(feasible, free_feas, free_inf)
    done = feasible & ~add
    return w_new, free_new, it + 1, done

  def cond(carry):
    _, _, it, done = carry
    return (~done) & (it < max_iters)

  w, _, _, _ = jax.lax.while_loop(cond, body, (w0, free0, jnp.array(0), jnp.array(False)))
  return w


@functools.partial(jax.jit, static_argnames=("max_iters",))
def nash_solve(q: jax.Array, a0: jax.Array, *, max_iters: int = 100,
               tol: float | None = None) -> jax.Array:
  """Positive solution ``a`` of ``Q a = 1 / a`` (element-wise), warm-started at ``a0``.

  ``a`` minimises the self-concordant ``phi(a) = 1/2 a^T Q a - sum(log a)``, whose stationarity
  condition is exactly ``Q a - 1/a = 0``. Damped Newton (``a <- a - d / (1 + lambda)`` with
  Newton decrement ``lambda``) stays strictly positive and converges globally, quadratically
  near the solution (Nesterov & Nemirovski). ``Q`` must be positive definite for a finite
  solution; callers add a small ridge.

  Args:
    q: ``[n, n]`` symmetric positive definite matrix.
    a0: ``[n]`` strictly positive starting point (e.g. the previous step's solution).
    max_iters: iteration cap.
    tol: stop when the Newton decrement squared falls below it (default ``eps``-sized).

  Returns:
    ``[n]`` strictly positive solution.
  """
  dtype = q.dtype
  tol = 16 * jnp.finfo(dtype).eps if tol is None else tol

  def body(carry):
    a, it, _ = carry
    grad = q @ a - 1.0 / a
    hess = q + jnp.diag(1.0 / a**2)
    d = jnp.linalg.solve(hess, grad)
    lam2 = jnp.maximum(grad @ d, 0.0)
    lam = jnp.sqrt(lam2)
    step = jnp.where(lam > 0.25, 1.0 / (1.0 + lam), 1.0)
    a_new = a - step * d
    a_new = jnp.where(a_new > 0, a_new, a * 0.5)  # guard rounding; never taken in theory
    return a_new, it + 1, lam2 < tol

  def cond(carry):
    _, it, done = carry
    return (~done) & (it < max_iters)

  a, _, _ = jax.lax.while_loop(cond, body, (a0.astype(dtype), jnp.array(0), jnp.array(False)))
  return a
