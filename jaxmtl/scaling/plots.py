"""Matplotlib (Agg) plots of scaling-law fits: fit vs data, loss vs compute, IsoFLOP curves.

Each function takes arrays and a `FitResult` (jaxmtl.scaling.fit) and writes a PNG to `path`,
returning the path. The IsoFLOP figure follows Hoffmann et al. 2022 (arXiv 2203.15556,
Fig. 3); the frontier is the Chinchilla compute-optimal loss L(N*(C), D*(C)).
"""
from __future__ import annotations

import pathlib
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxmtl.scaling import laws  # noqa: E402


def _save(fig, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_fit_vs_data(observed: Any, predicted: Any, path, *, title: str = "") -> pathlib.Path:
  """Scatter of predicted vs observed values ([M] each) with the y = x line."""
  obs, pred = np.asarray(observed, float), np.asarray(predicted, float)
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.scatter(obs, pred, s=10, alpha=0.7)
  lo, hi = min(obs.min(), pred.min()), max(obs.max(), pred.max())
  ax.plot([lo, hi], [lo, hi], "k--", lw=1)
  ax.set_xlabel("observed")
  ax.set_ylabel("fitted")
  ax.set_title(title)
  return _save(fig, path)


def plot_loss_vs_compute(c: Any, loss: Any, path, *, fit=None, title: str = "") -> pathlib.Path:
  """Loss vs compute C ([M] each), log-x; with a chinchilla `fit`, its compute-optimal
  frontier L(N*(C), D*(C))."""
  c, loss = np.asarray(c, float), np.asarray(loss, float)
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.scatter(c, loss, s=10, alpha=0.6, label="runs")
  if fit is not None and all(k in fit.params for k in ("A", "B", "E", "alpha", "beta")):
    p = fit.params
    cc = np.geomspace(c.min(), c.max() * 10, 200)
    n_opt, d_opt = laws.chinchilla_compute_optimal(cc, p["A"], p["B"], p["alpha"], p["beta"])
    ax.plot(cc, laws.chinchilla(n_opt, d_opt, p["A"], p["B"], p["E"], p["alpha"], p["beta"]),
            "r-", label="compute-optimal frontier")
    ax.legend()
  ax.set_xscale("log")
  ax.set_xlabel("compute C (FLOPs)")
  ax.set_ylabel("loss")
  ax.set_title(title)
  return _save(fig, path)


def plot_isoflop(n: Any, loss: Any, budgets: Any, path, *, fit=None,
                 title: str = "") -> pathlib.Path:
  """IsoFLOP curves: loss vs N per budget label ([M] each); with an isoflop `fit`, its
  per-budget optima (fit.extra["optima"] rows C, N*, D*, L*)."""
  n, loss, budgets = np.asarray(n, float), np.asarray(loss, float), np.asarray(budgets)
  fig, ax = plt.subplots(figsize=(5.5, 4))
  labels = np.unique(budgets)
  colors = plt.cm.viridis(np.linspace(0, 1, max(len(labels), 2)))
  for col, u in zip(colors, labels):
    g = budgets == u
    o = np.argsort(n[g])
    ax.plot(n[g][o], loss[g][o], "o-", color=col, ms=3, lw=1)
  if fit is not None and "optima" in fit.extra:
    opt = np.asarray(fit.extra["optima"])
    if opt.size:
      ax.scatter(opt[:, 1], opt[:, 3], marker="*", s=80, c="r", zorder=3, label="N*")
      ax.legend()
  ax.set_xscale("log")
  ax.set_xlabel("parameters N")
  ax.set_ylabel("loss")
  ax.set_title(title)
  return _save(fig, path)
