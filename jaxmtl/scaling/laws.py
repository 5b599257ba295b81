"""Scaling-law functional forms as pure numpy functions.

Every function takes arrays (any matching shape, broadcast elementwise) and scalar parameters
and returns an array of the same broadcast shape. Parameter names follow the paper (and the
reference code) each form comes from:

* Chinchilla, Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models",
  arXiv 2203.15556: L(N, D) = E + A / N^alpha + B / D^beta; written in the log-sum-exp form of
  Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv 2404.10102
  (epoch-research/analyzing-chinchilla) with a = log A, b = log B, e = log E.
* Kaplan et al. 2020, "Scaling Laws for Neural Language Models", arXiv 2001.08361:
  L(N) = (N_c / N)^alpha_N, L(D) = (D_c / D)^alpha_D and eq. 1.5
  L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D.
* The Kaplan form with an offset as used by Brandfonbrener et al. 2024, "Loss-to-Loss
  Prediction: Scaling Laws for All Datasets", arXiv 2411.12925
  (KempnerInstitute/loss-to-loss-notebooks, opt_params_data.csv with kaplan=True):
  L = E + [(A / N)^(alpha / beta) + B / D]^beta.
* Loss-to-loss shifted power law (same paper, eq. 2): L_y = K (L_x - E_x)^kappa + E_y.
* OLMo ladder two-step (Bhagia et al. 2024, "Establishing Task Scaling Laws via
  Compute-Efficient Model Ladders", arXiv 2412.04403, allenai/OLMo-ladder): step 1 is the
  Chinchilla form, step 2 the sigmoid Acc(L) = a / (1 + exp(-k (L - L0))) + b.
* Power law with offset, y = E + A x^(-alpha) (Porian et al. 2024, arXiv 2406.19146,
  `fit_loss_with_saturation` in formll/resolving-scaling-law-discrepancies).
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _arr(x: ArrayLike) -> np.ndarray:
  return np.asarray(x, dtype=np.float64)


def chinchilla(n: ArrayLike, d: ArrayLike, A: float, B: float, E: float, alpha: float,
               beta: float) -> np.ndarray:
  """Chinchilla loss L(N, D) = E + A / N^alpha + B / D^beta (arXiv 2203.15556, eq. 2).

  Args:
    n: parameters N, shape [...].
    d: training tokens D, shape [...] (broadcast with n).
  Returns:
    loss, shape [...] (float64).
  """
  return E + A / _arr(n) ** alpha + B / _arr(d) ** beta


def chinchilla_log(n: ArrayLike, d: ArrayLike, a: float, b: float, e: float, alpha: float,
                   beta: float) -> np.ndarray:
  """log L in Epoch's log-sum-exp form: LSE(a - alpha log N, b - beta log D, e).

  Follows `log_sum_exp` of epoch-research/analyzing-chinchilla (arXiv 2404.10102), with
  a = log A, b = log B, e = log E. Shapes as in `chinchilla`.
  """
  ln, ld = np.log(_arr(n)), np.log(_arr(d))
  ln, ld = np.broadcast_arrays(ln, ld)
  terms = np.stack([a - alpha * ln, b - beta * ld, np.full_like(ln, e)])
  return np.logaddexp.reduce(terms, axis=0)


def kaplan_n(n: ArrayLike, n_c: float, alpha_n: float) -> np.ndarray:
  """Kaplan L(N) = (N_c / N)^alpha_N (arXiv 2001.08361, eq. 1.1). n: [...] -> [...]."""
  return (n_c / _arr(n)) ** alpha_n


def kaplan_d(d: ArrayLike, d_c: float, alpha_d: float) -> np.ndarray:
  """Kaplan L(D) = (D_c / D)^alpha_D (arXiv 2001.08361, eq. 1.2). d: [...] -> [...]."""
  return (d_c / _arr(d)) ** alpha_d


def kaplan_nd(n: ArrayLike, d: ArrayLike, n_c: float, d_c: float, alpha_n: float,
              alpha_d: float, E: float = 0.0) -> np.ndarray:
  """Kaplan eq. 1.5 L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, plus offset E.

  With E > 0 and (n_c, d_c, alpha_n, alpha_d) = (A, B, alpha, beta) this is the `kaplan=True`
  form of Brandfonbrener et al. 2024 (arXiv 2411.12925). n, d: [...] -> [...].
  """
  inner = (n_c / _arr(n)) ** (alpha_n / alpha_d) + d_c / _arr(d)
  return E + inner ** alpha_d


def power_law(x: ArrayLike, A: float, alpha: float, E: float = 0.0) -> np.ndarray:
  """Power law with offset y = E + A x^(-alpha). x: [...] -> [...].

  E = 0 gives the pure power law; note the exponent sign: a growing quantity such as
  N*(C) = k C^a is `power_law(C, k, -a)`.
  """
  return E + A * _arr(x) ** (-alpha)


def loss_to_loss(l_x: ArrayLike, K: float, kappa: float, E_x: float, E_y: float) -> np.ndarray:
  """Shifted power law L_y = K (L_x - E_x)^kappa + E_y (arXiv 2411.12925, eq. 2).

  E_x, E_y are the irreducible losses of the two per-dataset scaling laws. l_x: [...] -> [...].
  """
  return K * np.clip(_arr(l_x) - E_x, 1e-12, None) ** kappa + E_y


def olmo_sigmoid(loss: ArrayLike, a: float, k: float, L0: float, b: float) -> np.ndarray:
  """OLMo-ladder step 2: Acc(L) = a / (1 + exp(-k (L - L0))) + b (arXiv 2412.04403, eq. 2).

  In the paper k < 0 so accuracy falls as task loss rises. loss: [...] -> [...].
  """
  return a / (1.0 + np.exp(-k * (_arr(loss) - L0))) + b


def chinchilla_compute_optimal(c: ArrayLike, A: float, B: float, alpha: float,
                               beta: float) -> tuple[np.ndarray, np.ndarray]:
  """Compute-optimal N*(C), D*(C) for the Chinchilla form under C = 6 N D.

  Closed form (arXiv 2203.15556, eq. 4): with G = (alpha A / (beta B))^(1 / (alpha + beta)),
  N* = G (C/6)^(beta / (alpha + beta)) and D* = G^-1 (C/6)^(alpha / (alpha + beta)).
  c: [...] -> (N*, D*), each [...].
  """
  c6 = _arr(c) / 6.0
  g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
  n_opt = g * c6 ** (beta / (alpha + beta))
  d_opt = c6 ** (alpha / (alpha + beta)) / g
  return n_opt, d_opt
