"""Fitting scaling laws to (N, D, C, loss) measurements, with seeded bootstrap errors.

Public API (DESIGN.md): `fit_chinchilla`, `fit_power_law`, `fit_isoflop`, `fit_loss_to_loss`,
`compute_optimal`, plus `fit_kaplan` and `fit_olmo_two_step`. Each fit returns a frozen
`FitResult` (parameters, bootstrap standard errors, bootstrap samples).

Conventions follow the reference implementations:

* Chinchilla (approach 3) as Besiroglu et al. 2024, "Chinchilla Scaling: A replication
  attempt", arXiv 2404.10102, code epoch-research/analyzing-chinchilla: the log-sum-exp form
  on log-loss with a = log A, b = log B, e = log E; Huber loss with delta = 1e-3 *summed* over
  points (optax.huber_loss convention 0.5 r^2 inside delta); L-BFGS-B from the grid
  alpha, beta in {0, .5, .., 2}, e in {-1, -.5, .., 1}, a, b in {0, 5, .., 25} (4,500 starts),
  keeping the best *successful* run; and their maximum-likelihood variant (Huber density
  with a fitted log-scale sigma, BFGS started from Hoffmann et al.'s published fit).
  Epoch fit on all but the 5 highest-loss points: see `epoch_outlier_mask`.
* Compute-optimal exponents (Chinchilla approach 2 / Porian et al. 2024, "Resolving
  Discrepancies in Compute-Optimal Scaling of Language Models", arXiv 2406.19146, code
  formll/resolving-scaling-law-discrepancies `power_law_fit`): ordinary or weighted (weights
  1/sigma^2 of log N*) least squares of log y on log x.
* Gradients come from JAX in float64 (inside `jax.enable_x64`); the optimizer is scipy's.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize as sopt
from scipy.stats import norm

from jaxmtl.scaling import laws

# Hoffmann et al.'s published fit in Epoch's (a, b, e, alpha, beta) parametrisation
# (`true_params` in epoch-research/analyzing-chinchilla): A=406.4, B=410.7, E=1.69.
HOFFMANN_PARAMS = (6.0073404, 6.0179186, 0.5267228, 0.33917084, 0.2849083)


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
  """A fitted law.

  Attributes:
    form: name of the functional form (e.g. "chinchilla").
    params: fitted parameters by name (natural scale: A, not log A).
    stderr: bootstrap standard error per parameter (NaN when n_bootstrap == 0).
    objective: final value of the fitting objective.
    n_points: number of data points used.
    n_bootstrap: number of bootstrap replicates.
    seed: seed of the bootstrap resampling.
    samples: bootstrap parameter samples, shape [n_bootstrap, len(params)] (same key order).
    extra: form-specific extras (e.g. per-budget optima of an IsoFLOP fit).
  """
  form: str
  params: Mapping[str, float]
  stderr: Mapping[str, float]
  objective: float
  n_points: int
  n_bootstrap: int = 0
  seed: int = 0
  samples: np.ndarray | None = None
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __getitem__(self, name: str) -> float:
    return self.params[name]

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable summary (no samples)."""
    def conv(v):
      if isinstance(v, np.ndarray):
        return v.tolist()
      if isinstance(v, (np.floating, np.integer)):
        return v.item()
      return v
    return {"form": self.form, "params": {k: float(v) for k, v in self.params.items()},
            "stderr": {k: float(v) for k, v in self.stderr.items()},
            "objective": float(self.objective), "n_points": self.n_points,
            "n_bootstrap": self.n_bootstrap, "seed": self.seed,
            "extra": {k: conv(v) for k, v in self.extra.items()}}


# ----------------------------------------------------------------------------- helpers


def _as_positive(name: str, x: Any) -> np.ndarray:
  arr = np.asarray(x, dtype=np.float64).reshape(-1)
  if arr.size == 0:
    raise ValueError(f"{name}: empty input")
  bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
  if bad.size:
    raise ValueError(f"{name}: values must be finite and > 0; index {int(bad[0])} is "
                     f"{arr[bad[0]]!r}")
  return arr


def _same_len(**arrays: np.ndarray) -> int:
  lens = {k: len(v) for k, v in arrays.items()}
  if len(set(lens.values())) != 1:
    raise ValueError(f"inputs must have equal length, got {lens}")
  return next(iter(lens.values()))


def _need(n: int, k: int, form: str) -> None:
  if n < k:
    raise ValueError(f"form {form!r} needs at least {k} data points, got {n}")


def _huber(r, delta):
  return optax.losses.huber_loss(r, jnp.zeros_like(r), delta=delta)


def _reduce(x, reduce: str):
  return jnp.sum(x) if reduce == "sum" else jnp.mean(x)


def _check_reduce(reduce: str) -> None:
  if reduce not in ("sum", "mean"):
    raise ValueError(f"reduce must be 'sum' (Epoch) or 'mean', got {reduce!r}")


def _minimize(value_fn: Callable, starts: np.ndarray, args: tuple, method: str = "L-BFGS-B",
              require_success: bool = True) -> tuple[np.ndarray, float]:
  """Multi-start scipy minimisation of a JAX objective (float64 value and gradient).

  starts: [n_starts, n_params]. Returns the best (params [n_params], value); like Epoch,
  only runs scipy reports as successful count unless none succeeded.
  """
  with jax.enable_x64(True):
    vg = jax.jit(jax.value_and_grad(value_fn))
    jargs = tuple(jnp.asarray(a, dtype=jnp.float64) for a in args)

    def fun(p):
      v, g = vg(jnp.asarray(p, dtype=jnp.float64), *jargs)
      return float(v), np.asarray(g, dtype=np.float64)

    best, best_any = (np.inf, None), (np.inf, None)
    for p0 in np.atleast_2d(starts):
      res = sopt.minimize(fun, np.asarray(p0, np.float64), jac=True, method=method)
      if not np.isfinite(res.fun):
        continue
      if res.fun < best_any[0]:
        best_any = (res.fun, res.x)
      if res.success and res.fun < best[0]:
        best = (res.fun, res.x)
  if best[1] is None or not require_success:
    best = best_any
  if best[1] is None:
    raise ValueError("optimisation failed from every start (non-finite objective)")
  return np.asarray(best[1]), float(best[0])


def _bootstrap(fit_once: Callable[[np.ndarray], np.ndarray], m: int, n_bootstrap: int,
               seed: int) -> np.ndarray:
  """Resample m points with replacement n_bootstrap times; returns [n_bootstrap, k]."""
  if n_bootstrap < 0:
    raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
  rng = np.random.default_rng(seed)
  out = [np.asarray(fit_once(rng.integers(0, m, size=m)), np.float64)
         for _ in range(n_bootstrap)]
  return np.stack(out) if out else np.zeros((0, 0))


def _stderr(names: Sequence[str], samples: np.ndarray) -> dict[str, float]:
  if samples.shape[0] < 2:
    return {k: float("nan") for k in names}
  sd = np.std(samples, axis=0, ddof=1)
  return {k: float(s) for k, s in zip(names, sd)}


# ----------------------------------------------------------------------------- Chinchilla


def epoch_grid() -> np.ndarray:
  """Epoch's 4,500 initialisations, shape [4500, 5], columns (a, b, e, alpha, beta).

  Order is Epoch's `product(alpha_vals, beta_vals, e_vals, a_vals, b_vals)`.
  """
  alpha = np.arange(0, 2.5, 0.5)
  beta = np.arange(0, 2.5, 0.5)
  e = np.arange(-1, 1.5, 0.5)
  a = np.arange(0, 30, 5)
  b = np.arange(0, 30, 5)
  grid = np.array(list(itertools.product(alpha, beta, e, a, b)), dtype=np.float64)
  return grid[:, [3, 4, 2, 0, 1]]


def loss_to_loss_grid() -> np.ndarray:
  """Brandfonbrener et al.'s 16 initialisations (KempnerInstitute/loss-to-loss-notebooks,
  `curve_fitting.py`), shape [16, 5], columns (a, b, e, alpha, beta): a, b in {5, 10, 15, 20},
  e = 0.5, alpha = beta = 0.4. Also the starts of their Kaplan form (`fit_kaplan`,
  form="nd_offset": log N_c, log D_c, alpha_N, alpha_D, log E in the same columns)."""
  ab = np.arange(5.0, 25.0, 5.0)
  grid = np.array(list(itertools.product(ab, ab)), dtype=np.float64)
  return np.concatenate([grid, np.tile([0.5, 0.4, 0.4], (len(grid), 1))], axis=1)


def epoch_outlier_mask(loss: Any, n_excluded: int = 5) -> np.ndarray:
  """Epoch's filter: keep points with loss < the n_excluded-th highest loss. [M] -> bool [M]."""
  loss = np.asarray(loss, dtype=np.float64)
  if n_excluded <= 0:
    return np.ones(loss.shape, dtype=bool)
  return loss < np.sort(loss)[-n_excluded]


def _chin_log_pred(p, ln, ld):
  a, b, e, alpha, beta = p[0], p[1], p[2], p[3], p[4]
  terms = jnp.stack([a - alpha * ln, b - beta * ld, jnp.broadcast_to(e, ln.shape)])
  return jax.scipy.special.logsumexp(terms, axis=0)


def _chin_huber(p, ln, ld, ll, delta, reduce_sum):
  r = _chin_log_pred(p, ln, ld) - ll
  h = _huber(r, delta)
  return jnp.where(reduce_sum > 0, jnp.sum(h), jnp.mean(h))


def _huber_log_norm(delta: float) -> float:
  return float(np.log(np.sqrt(2 * np.pi) * (1 - 2 * norm.sf(delta))
                      + 2 * np.exp(-0.5 * delta ** 2) / delta))


def _chin_nll(p, ln, ld, ll, delta, log_z):
  scale = jnp.exp(p[5])
  x = (ll - _chin_log_pred(p[:5], ln, ld)) / scale
  return jnp.sum(_huber(x, delta) + log_z + p[5])


_CHIN_NAMES = ("A", "B", "E", "alpha", "beta")


def _chin_natural(x: np.ndarray) -> np.ndarray:
  return np.concatenate([np.exp(x[:3]), x[3:5]])


def _check_optimizer(optimizer: str) -> None:
  if optimizer not in ("L-BFGS-B", "BFGS"):
    raise ValueError(f"optimizer must be 'L-BFGS-B' (Epoch) or 'BFGS', got {optimizer!r}")


def fit_chinchilla(n: Any, d: Any, loss: Any, *, method: str = "huber",
                   starts: np.ndarray | None = None, delta: float = 1e-3,
                   reduce: str = "sum", optimizer: str = "L-BFGS-B", n_bootstrap: int = 0,
                   seed: int = 0, bootstrap_start: str = "hoffmann") -> FitResult:
  """Fit L(N, D) = E + A/N^alpha + B/D^beta as Epoch AI did (arXiv 2404.10102).

  Args:
    n, d, loss: parameters, tokens, final loss; each shape [M], all > 0.
    method: "huber" (Epoch's grid of L-BFGS-B runs minimising the Huber loss of log-loss
      residuals) or "mle" (Epoch's maximum-likelihood fit under a Huber density with fitted
      scale, BFGS from `HOFFMANN_PARAMS` and log-scale 0).
    starts: initialisations [S, 5] in (a, b, e, alpha, beta); default `epoch_grid()`
      (ignored for "mle").
    delta: Huber delta (Epoch: 1e-3). reduce: "sum" (Epoch) or "mean" (Brandfonbrener et
      al.) over points: the same minimiser, so the optimiser always sees the sum (scipy's
      stopping tolerances are absolute below 1 and stopped "mean" fits early) and only the
      reported objective is divided by the number of points.
    optimizer: the "huber" fit's scipy method: "L-BFGS-B" (Epoch; best run scipy reports
      as successful) or "BFGS" (best objective of all starts, successful or not: scipy
      flags precision loss at the ~1e-6 objectives of good fits; with `loss_to_loss_grid()`
      and reduce="mean" this reproduces Brandfonbrener et al.'s opt_params_data.csv).
    n_bootstrap, seed: bootstrap replicates (resampling points with replacement; as Epoch,
      each "huber" replicate is one BFGS run from `HOFFMANN_PARAMS`, each "mle" replicate
      starts from the full-data optimum) and their seed.
    bootstrap_start: where each "huber" replicate's BFGS starts: "hoffmann" (Epoch's choice,
      natural for LLM-scale data) or "fit" (the full-data optimum: for data far from
      Hoffmann et al.'s regime, e.g. a small CPU ladder, starting at their fit lands
      replicates in poor local minima and inflates the standard errors).
  Returns:
    FitResult with params A, B, E, alpha, beta (and sigma for "mle").
  """
  n, d, loss = (_as_positive(k, v) for k, v in (("N", n), ("D", d), ("loss", loss)))
  m = _same_len(N=n, D=d, loss=loss)
  _need(m, 6, "chinchilla")
  _check_reduce(reduce)
  if bootstrap_start not in ("hoffmann", "fit"):
    raise ValueError(f"bootstrap_start must be 'hoffmann' (Epoch) or 'fit', got "
                     f"{bootstrap_start!r}")
  ln, ld, ll = np.log(n), np.log(d), np.log(loss)
  if method == "huber":
    starts = epoch_grid() if starts is None else np.asarray(starts, np.float64)
    if starts.ndim != 2 or starts.shape[1] != 5:
      raise ValueError(f"starts must have shape [S, 5] (a, b, e, alpha, beta), got "
                       f"{starts.shape}")
    _check_optimizer(optimizer)
    flag = 1.0  # minimise the sum; "mean" only rescales the reported objective
    x, fun = _minimize(_chin_huber, starts, (ln, ld, ll, delta, flag), method=optimizer,
                       require_success=optimizer == "L-BFGS-B")
    fun = fun / m if reduce == "mean" else fun
    names = _CHIN_NAMES

    start = np.array(HOFFMANN_PARAMS) if bootstrap_start == "hoffmann" else x

    def once(idx):  # Epoch's bootstrap: BFGS from Hoffmann et al.'s fit on each resample
      xb, _ = _minimize(_chin_huber, start[None],
                        (ln[idx], ld[idx], ll[idx], delta, flag), method="BFGS",
                        require_success=False)
      return _chin_natural(xb)
    params = _chin_natural(x)
  elif method == "mle":
    log_z = _huber_log_norm(delta)
    p0 = np.array([*HOFFMANN_PARAMS, 0.0])
    x, fun = _minimize(_chin_nll, p0[None], (ln, ld, ll, delta, log_z), method="BFGS",
                       require_success=False)
    names = _CHIN_NAMES + ("sigma",)

    def once(idx):
      xb, _ = _minimize(_chin_nll, x[None], (ln[idx], ld[idx], ll[idx], delta, log_z),
                        method="BFGS", require_success=False)
      return np.concatenate([_chin_natural(xb), np.exp(xb[5:])])
    params = np.concatenate([_chin_natural(x), np.exp(x[5:])])
  else:
    raise ValueError(f"method must be 'huber' or 'mle', got {method!r}")
  samples = _bootstrap(once, m, n_bootstrap, seed)
  return FitResult("chinchilla", dict(zip(names, map(float, params))),
                   _stderr(names, samples), fun, m, n_bootstrap, seed, samples,
                   {"method": method})


# ----------------------------------------------------------------------------- Kaplan


def _kaplan_log_pred(p, ln, ld, form):
  if form == "n":   # p = (log n_c, alpha_n)
    return p[1] * (p[0] - ln)
  if form == "d":   # p = (log d_c, alpha_d)
    return p[1] * (p[0] - ld)
  # p = (log n_c, log d_c, alpha_n, alpha_d[, e])
  inner = jnp.logaddexp((p[2] / p[3]) * (p[0] - ln), p[1] - ld)
  core = p[3] * inner
  if form == "nd_offset":
    return jnp.logaddexp(core, p[4])
  return core


def fit_kaplan(loss: Any, *, n: Any = None, d: Any = None, form: str = "nd",
               starts: np.ndarray | None = None, delta: float = 1e-3, reduce: str = "sum",
               optimizer: str = "L-BFGS-B", n_bootstrap: int = 0, seed: int = 0) -> FitResult:
  """Fit Kaplan et al.'s forms (arXiv 2001.08361) by Huber loss on log-loss, multi-start.

  Args:
    loss: final losses [M]. n, d: parameters / tokens [M] (as the form needs).
    form: "n" -> L = (N_c/N)^alpha_N; "d" -> L = (D_c/D)^alpha_D; "nd" -> eq. 1.5;
      "nd_offset" -> eq. 1.5 + E, the loss-to-loss paper's kaplan=True form (arXiv 2411.12925).
    starts: [S, k] in log-parameters (log N_c, log D_c, alpha_N, alpha_D[, log E]).
    reduce, optimizer: as `fit_chinchilla` (the sum is minimised either way).
  Returns:
    FitResult with N_c / D_c / alpha_N / alpha_D (and E).
  """
  _check_reduce(reduce)
  forms = {"n": ("N_c", "alpha_N"), "d": ("D_c", "alpha_D"),
           "nd": ("N_c", "D_c", "alpha_N", "alpha_D"),
           "nd_offset": ("N_c", "D_c", "alpha_N", "alpha_D", "E")}
  if form not in forms:
    raise ValueError(f"form must be one of {sorted(forms)}, got {form!r}")
  loss = _as_positive("loss", loss)
  m = len(loss)
  ln = np.log(_as_positive("N", n)) if form != "d" else np.zeros(m)
  ld = np.log(_as_positive("D", d)) if form != "n" else np.zeros(m)
  _same_len(N=ln, D=ld, loss=loss)
  names = forms[form]
  _need(m, len(names) + 1, f"kaplan/{form}")
  ll = np.log(loss)
  if starts is None:
    if form in ("n", "d"):
      starts = np.array(list(itertools.product(np.arange(10, 40, 5), [0.05, 0.1, 0.3, 0.6])))
    else:
      grid = [np.arange(10, 35, 5), np.arange(10, 35, 5), [0.1, 0.3, 0.6], [0.1, 0.3, 0.6]]
      if form == "nd_offset":
        grid.append([-1.0, 0.0, 1.0])
      starts = np.array(list(itertools.product(*grid)))
  starts = np.asarray(starts, np.float64)
  _check_optimizer(optimizer)

  def obj(p, ln, ld, ll):
    return jnp.sum(_huber(_kaplan_log_pred(p, ln, ld, form) - ll, delta))

  def natural(x):
    x = np.array(x, dtype=np.float64)
    k = 1 if form in ("n", "d") else 2
    x[:k] = np.exp(x[:k])
    if form == "nd_offset":
      x[4] = np.exp(x[4])
    return x

  x, fun = _minimize(obj, starts, (ln, ld, ll), method=optimizer,
                     require_success=optimizer == "L-BFGS-B")
  fun = fun / m if reduce == "mean" else fun
  samples = _bootstrap(lambda i: natural(_minimize(obj, x[None], (ln[i], ld[i], ll[i]),
                                                   method=optimizer, require_success=False)[0]),
                       m, n_bootstrap, seed)
  return FitResult(f"kaplan_{form}", dict(zip(names, map(float, natural(x)))),
                   _stderr(names, samples), fun, m, n_bootstrap, seed, samples)


# ----------------------------------------------------------------------------- power laws


def _wls_loglog(lx: np.ndarray, ly: np.ndarray, w: np.ndarray | None) -> np.ndarray:
  """Weighted least squares of ly = c0 + c1 lx; returns (c1, c0)."""
  a = np.stack([lx, np.ones_like(lx)], axis=1)
  sw = np.ones_like(lx) if w is None else np.sqrt(w)
  coef, *_ = np.linalg.lstsq(a * sw[:, None], ly * sw, rcond=None)
  return coef


def fit_power_law(x: Any, y: Any, *, offset: bool = False, sigma: Any = None,
                  starts: np.ndarray | None = None, delta: float = 1e-3,
                  n_bootstrap: int = 0, seed: int = 0) -> FitResult:
  """Fit y = k x^a (offset=False) or y = E + A x^(-alpha) (offset=True).

  offset=False: least squares of log y on log x, weighted by 1/sigma^2 when `sigma` (the
    standard deviation of log y, shape [M]) is given -- Porian et al.'s `power_law_fit`
    (arXiv 2406.19146). Params: exponent a, coefficient k.
  offset=True: Epoch-style Huber (delta) on log y with y = exp(LSE(log A - alpha log x, log E))
    from a grid of starts (log A in 0..25, alpha in 0..1.5, log E in -1..1), as Porian's
    `fit_loss_with_saturation`. Params: A, alpha, E.
  x, y: shape [M], > 0.
  """
  x, y = _as_positive("x", x), _as_positive("y", y)
  m = _same_len(x=x, y=y)
  lx, ly = np.log(x), np.log(y)
  if not offset:
    _need(m, 2, "power_law")
    w = None
    if sigma is not None:
      s = _as_positive("sigma", sigma)
      _same_len(x=x, sigma=s)
      w = 1.0 / s ** 2
    coef = _wls_loglog(lx, ly, w)
    names = ("a", "k")

    def once(i):
      c = _wls_loglog(lx[i], ly[i], None if w is None else w[i])
      return np.array([c[0], np.exp(c[1])])
    params = np.array([coef[0], np.exp(coef[1])])
    resid = ly - (coef[1] + coef[0] * lx)
    fun = float(np.sum(resid ** 2 if w is None else w * resid ** 2))
    extra = {"weighted": w is not None, "r2": float(1 - np.sum(resid ** 2)
                                                     / np.sum((ly - ly.mean()) ** 2))}
  else:
    _need(m, 4, "power_law with offset")
    if starts is None:
      starts = np.array(list(itertools.product(np.arange(0, 30, 5), [0.0, 0.25, 0.5, 1.0],
                                               np.arange(-1, 1.5, 0.5))))

    def obj(p, lx, ly):
      pred = jnp.logaddexp(p[0] - p[1] * lx, p[2])
      return jnp.sum(_huber(pred - ly, delta))
    xo, fun = _minimize(obj, np.asarray(starts, np.float64), (lx, ly))
    names = ("A", "alpha", "E")

    def nat(p):
      return np.array([np.exp(p[0]), p[1], np.exp(p[2])])

    def once(i):
      return nat(_minimize(obj, xo[None], (lx[i], ly[i]), require_success=False)[0])
    params = nat(xo)
    extra = {}
  samples = _bootstrap(once, m, n_bootstrap, seed)
  return FitResult("power_law_offset" if offset else "power_law",
                   dict(zip(names, map(float, params))), _stderr(names, samples), fun, m,
                   n_bootstrap, seed, samples, extra)


def fit_porian_exponent(flops: Any, n_opt: Any, n_opt_std: Any = None, *,
                        n_bootstrap: int = 0, seed: int = 0) -> FitResult:
  """N*(C) = k C^a as Porian et al. (arXiv 2406.19146): weighted log-log least squares.

  flops, n_opt, n_opt_std: [M]; rows with NaN are dropped as their `df.dropna()` does.
  n_opt_std is the std of log N* (their `n_star_std`); None -> unweighted.
  """
  f = np.asarray(flops, np.float64)
  n = np.asarray(n_opt, np.float64)
  cols = [f, n] + ([] if n_opt_std is None else [np.asarray(n_opt_std, np.float64)])
  keep = np.all([np.isfinite(c) for c in cols], axis=0)
  s = None if n_opt_std is None else cols[2][keep]
  return fit_power_law(f[keep], n[keep], sigma=s, n_bootstrap=n_bootstrap, seed=seed)


# ----------------------------------------------------------------------------- IsoFLOP


def group_budgets(flops: Any, rtol: float = 0.1) -> np.ndarray:
  """Cluster compute values into IsoFLOP budgets: [M] -> integer labels [M].

  Points whose sorted log-compute differ by less than log(1 + rtol) from their neighbour
  share a budget (Chinchilla's IsoFLOP points lie within ~10 % of nominal budgets).
  """
  lf = np.log(_as_positive("C", flops))
  order = np.argsort(lf)
  labels = np.empty(len(lf), dtype=np.int64)
  cur = 0
  for j, i in enumerate(order):
    if j and lf[i] - lf[order[j - 1]] > np.log1p(rtol):
      cur += 1
    labels[i] = cur
  return labels


def fit_isoflop(n: Any, loss: Any, flops: Any, *, budgets: Any = None, rtol: float = 0.1,
                min_points: int = 3, n_bootstrap: int = 0, seed: int = 0) -> FitResult:
  """Chinchilla approach 2 (arXiv 2203.15556, sec. 3.2): IsoFLOP parabolas, then power laws.

  For each compute budget, fit loss = p2 (log N)^2 + p1 log N + p0 (least squares) and take
  N* = exp(-p1 / (2 p2)), C = budget's geometric-mean compute, D* = C / (6 N*); then fit
  N* = k_N C^a and D* = k_D C^b by log-log least squares. Budgets with fewer than
  `min_points` points or a non-convex parabola are skipped.

  Args:
    n, loss, flops: [M] each, > 0.
    budgets: optional integer budget label per point [M]; default `group_budgets(flops, rtol)`.
  Returns:
    FitResult with params a, k_N, b, k_D; extra["optima"] is [B, 4] (C, N*, D*, L*),
    extra["parabolas"] [B, 6] (C, p2, p1, p0, min log N, max log N) of the kept budgets.
    Bootstrap resamples points within each budget.
  """
  n, loss, c = (_as_positive(k, v) for k, v in (("N", n), ("loss", loss), ("C", flops)))
  m = _same_len(N=n, loss=loss, C=c)
  labels = group_budgets(c, rtol) if budgets is None else np.asarray(budgets)
  if labels.shape != (m,):
    raise ValueError(f"budgets must have shape [{m}], got {labels.shape}")
  groups = [np.flatnonzero(labels == u) for u in np.unique(labels)]

  def optima(groups_idx, parabolas=None):
    rows = []
    for g in groups_idx:
      if len(g) < min_points:
        continue
      lnn = np.log(n[g])
      p2, p1, p0 = np.polyfit(lnn, loss[g], 2)
      if p2 <= 0:
        continue
      ln_star = -p1 / (2 * p2)
      cc = float(np.exp(np.mean(np.log(c[g]))))
      nn = float(np.exp(ln_star))
      rows.append((cc, nn, cc / (6 * nn), float(p0 - p1 ** 2 / (4 * p2))))
      if parabolas is not None:
        parabolas.append((cc, p2, p1, p0, lnn.min(), lnn.max()))
    return np.array(rows, dtype=np.float64).reshape(-1, 4)

  def params_of(opt):
    if len(opt) < 2:
      raise ValueError(f"isoflop needs >= 2 budgets with >= {min_points} points and a convex "
                       f"parabola, got {len(opt)}")
    ca, cn = _wls_loglog(np.log(opt[:, 0]), np.log(opt[:, 1]), None)
    cb, cd = _wls_loglog(np.log(opt[:, 0]), np.log(opt[:, 2]), None)
    return np.array([ca, np.exp(cn), cb, np.exp(cd)])

  parabolas: list = []
  opt = optima(groups, parabolas)
  params = params_of(opt)
  rng = np.random.default_rng(seed)
  if n_bootstrap < 0:
    raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
  samples = []
  for _ in range(n_bootstrap):
    rg = [rng.choice(g, size=len(g), replace=True) for g in groups]
    try:
      samples.append(params_of(optima(rg)))
    except ValueError:
      continue
  samples = np.asarray(samples, np.float64).reshape(-1, 4)
  names = ("a", "k_N", "b", "k_D")
  return FitResult("isoflop", dict(zip(names, map(float, params))), _stderr(names, samples),
                   0.0, m, n_bootstrap, seed, samples,
                   {"optima": opt, "parabolas": np.array(parabolas, np.float64).reshape(-1, 6)})


# ----------------------------------------------------------------------------- loss-to-loss


def fit_loss_to_loss(l_x: Any, l_y: Any, *, E_x: float | None = None, E_y: float | None = None,
                     delta: float = 1e-3, n_bootstrap: int = 0, seed: int = 0) -> FitResult:
  """Fit L_y = K (L_x - E_x)^kappa + E_y (Brandfonbrener et al. 2024, arXiv 2411.12925).

  As in the paper, E_x and E_y are normally the irreducible losses E of the two datasets'
  Chinchilla fits and only K, kappa are fitted; when None they are fitted too (E_x is kept
  below min(L_x) by fitting log(min L_x - E_x)). Objective: Huber (delta) on log L_y.
  l_x, l_y: [M], > 0.
  """
  lx, ly = _as_positive("L_x", l_x), _as_positive("L_y", l_y)
  m = _same_len(L_x=lx, L_y=ly)
  fit_ex, fit_ey = E_x is None, E_y is None
  names = ("K", "kappa") + (("E_x",) if fit_ex else ()) + (("E_y",) if fit_ey else ())
  _need(m, len(names) + 1, "loss_to_loss")
  if not fit_ex and E_x >= lx.min():
    raise ValueError(f"E_x={E_x} must be below min(L_x)={lx.min()}")
  lmin = float(lx.min())

  def unpack(p):
    i = 2
    ex = lmin - jnp.exp(p[i]) if fit_ex else E_x
    i += fit_ex
    ley = p[i] if fit_ey else jnp.log(E_y)
    return p[0], p[1], ex, ley

  def obj(p, lx, ly):
    logk, kappa, ex, ley = unpack(p)
    pred = jnp.logaddexp(logk + kappa * jnp.log(jnp.maximum(lx - ex, 1e-12)), ley)
    return jnp.sum(_huber(pred - jnp.log(ly), delta))

  grid = [np.arange(-2, 2.5, 1.0), [0.5, 1.0, 2.0]]
  if fit_ex:
    grid.append(np.log([0.1, 0.5, 1.0]) + np.log(max(lmin, 1e-3)))
  if fit_ey:
    grid.append([-1.0, 0.0, 1.0])
  starts = np.array(list(itertools.product(*grid)), dtype=np.float64)

  def natural(p):
    out = [np.exp(p[0]), p[1]]
    if fit_ex:
      out.append(lmin - np.exp(p[2]))
    if fit_ey:
      out.append(np.exp(p[-1]))
    return np.array(out)

  x, fun = _minimize(obj, starts, (lx, ly))
  samples = _bootstrap(lambda i: natural(_minimize(obj, x[None], (lx[i], ly[i]),
                                                   require_success=False)[0]),
                       m, n_bootstrap, seed)
  extra = {"E_x": float(E_x) if not fit_ex else None, "E_y": float(E_y) if not fit_ey else None}
  return FitResult("loss_to_loss", dict(zip(names, map(float, natural(x)))),
                   _stderr(names, samples), fun, m, n_bootstrap, seed, samples, extra)


# ----------------------------------------------------------------------------- OLMo ladder


def fit_olmo_two_step(n: Any, d: Any, task_loss: Any, accuracy: Any, *,
                      starts: np.ndarray | None = None, n_bootstrap: int = 0,
                      seed: int = 0) -> FitResult:
  """OLMo ladder two-step fit (Bhagia et al. 2024, arXiv 2412.04403, allenai/OLMo-ladder).

  Step 1: task loss L(N, D) = A/N^alpha + B/D^beta + E (fitted with `fit_chinchilla`'s
  Huber method). Step 2: Acc(L) = a / (1 + exp(-k (L - L0))) + b by least squares
  (scipy curve_fit, as their step2.py) on the observed (task loss, accuracy) pairs.
  n, d, task_loss, accuracy: [M]. Returns params A, B, E, alpha, beta, a, k, L0, b.
  """
  step1 = fit_chinchilla(n, d, task_loss, starts=starts)
  tl = _as_positive("task_loss", task_loss)
  acc = np.asarray(accuracy, np.float64).reshape(-1)
  m = _same_len(task_loss=tl, accuracy=acc)
  _need(m, 5, "olmo_two_step")

  def step2(tl_, acc_):
    best = None
    for k0 in (-5.0, -10.0, -2.0):
      p0 = [acc_.max() - acc_.min() + 1e-3, k0, float(np.median(tl_)), float(acc_.min())]
      try:
        p, _ = sopt.curve_fit(laws.olmo_sigmoid, tl_, acc_, p0=p0, maxfev=100000)
      except RuntimeError:
        continue
      r = float(np.sum((laws.olmo_sigmoid(tl_, *p) - acc_) ** 2))
      if best is None or r < best[0]:
        best = (r, p)
    if best is None:
      raise ValueError("OLMo step-2 sigmoid fit did not converge")
    return best
  fun, p2 = step2(tl, acc)
  names = _CHIN_NAMES + ("a", "k", "L0", "b")
  params = np.concatenate([[step1.params[k] for k in _CHIN_NAMES], p2])
  samples = _bootstrap(lambda i: step2(tl[i], acc[i])[1], m, n_bootstrap, seed)
  se = dict(step1.stderr)
  se.update(_stderr(("a", "k", "L0", "b"), samples))
  return FitResult("olmo_two_step", dict(zip(names, map(float, params))), se, fun, m,
                   n_bootstrap, seed, samples, {"step1_objective": step1.objective})


# ----------------------------------------------------------------------------- allocation


@dataclasses.dataclass(frozen=True, eq=False)
class ComputeOptimal:
  """N*(C), D*(C) with bootstrap standard errors; all arrays shape [...] of `c`."""
  c: np.ndarray
  n_opt: np.ndarray
  d_opt: np.ndarray
  n_opt_se: np.ndarray
  d_opt_se: np.ndarray

  @property
  def tokens_per_param(self) -> np.ndarray:
    return self.d_opt / self.n_opt


def compute_optimal(fit: FitResult | Mapping[str, float], c: Any) -> ComputeOptimal:
  """Compute-optimal allocation under C = 6 N D for a Chinchilla fit (arXiv 2203.15556 eq. 4).

  fit: a chinchilla `FitResult` (standard errors from its bootstrap samples) or a mapping with
  A, B, alpha, beta. c: compute, shape [...].
  """
  params = fit.params if isinstance(fit, FitResult) else fit
  missing = [k for k in ("A", "B", "alpha", "beta") if k not in params]
  if missing:
    raise ValueError(f"compute_optimal needs a Chinchilla fit with A, B, alpha, beta; "
                     f"missing {missing}")
  c = _as_positive("C", c).reshape(np.shape(c))
  n_opt, d_opt = laws.chinchilla_compute_optimal(c, params["A"], params["B"],
                                                 params["alpha"], params["beta"])
  nan = np.full_like(n_opt, np.nan)
  n_se, d_se = nan, nan
  if isinstance(fit, FitResult) and fit.samples is not None and len(fit.samples) >= 2:
    keys = list(fit.params)
    s = fit.samples
    col = {k: s[:, keys.index(k)] for k in ("A", "B", "alpha", "beta")}
    ns, ds = laws.chinchilla_compute_optimal(c[..., None], col["A"], col["B"], col["alpha"],
                                             col["beta"])
    n_se, d_se = np.std(ns, axis=-1, ddof=1), np.std(ds, axis=-1, ddof=1)
  return ComputeOptimal(c, n_opt, d_opt, n_se, d_se)
