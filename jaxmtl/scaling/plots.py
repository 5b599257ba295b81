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
import matplotlib.ticker  # noqa: E402
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


def plot_loss_vs_compute(c: Any, loss: Any, path, *, fit=None, title: str = "",
                         groups: Any = None, group_label: str = "", heldout: Any = None,
                         ylabel: str = "loss", xlabel: str = "compute C (FLOPs)"
                         ) -> pathlib.Path:
  """Loss vs compute C ([M] each, C = 6 N D for the frontier to apply), log-x; with a
  chinchilla `fit`, its compute-optimal frontier L(N*(C), D*(C)).

  groups: optional label per point ([M], e.g. the width) for colours; heldout: optional
  (c [H], loss [H], predicted [H]) of runs kept out of the fit, drawn as stars with the
  fit's prediction joined to each.
  """
  c, loss = np.asarray(c, float), np.asarray(loss, float)
  fig, ax = plt.subplots(figsize=(6, 4.2))
  if groups is None:
    ax.scatter(c, loss, s=10, alpha=0.6, label="runs")
  else:
    groups = np.asarray(groups)
    labels = np.unique(groups)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(labels), 2)))
    for col, u in zip(colors, labels):
      g = groups == u
      ax.scatter(c[g], loss[g], s=22, color=col, label=f"{group_label}{u}", zorder=2)
  c_max = c.max()
  if heldout is not None:
    hc, hl, hp = (np.asarray(v, float) for v in heldout)
    ax.scatter(hc, hl, marker="*", s=140, c="k", zorder=4, label="held out (actual)")
    ax.scatter(hc, hp, marker="x", s=60, c="r", zorder=4, label="held out (predicted)")
    c_max = max(c_max, hc.max())
  if fit is not None and all(k in fit.params for k in ("A", "B", "E", "alpha", "beta")):
    p = fit.params
    cc = np.geomspace(c.min() / 2, c_max * 3, 200)
    n_opt, d_opt = laws.chinchilla_compute_optimal(cc, p["A"], p["B"], p["alpha"], p["beta"])
    ax.plot(cc, laws.chinchilla(n_opt, d_opt, p["A"], p["B"], p["E"], p["alpha"], p["beta"]),
            "r-", lw=1.2, label="compute-optimal frontier (fit)")
  ax.legend(fontsize=7)
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  return _save(fig, path)


def plot_isoflop(n: Any, loss: Any, budgets: Any, path, *, fit=None, title: str = "",
                 law=None, tokens_of=None, ylabel: str = "loss") -> pathlib.Path:
  """IsoFLOP curves: loss vs N per budget label ([M] each); with an isoflop `fit`, its
  per-budget optima (fit.extra["optima"] rows C, N*, D*, L*) and parabolas (extra["parabolas"]
  rows C, p2, p1, p0, min log N, max log N); with a chinchilla `law` and `tokens_of(n, c) -> D`, the
  law's loss along each budget (dotted)."""
  n, loss, budgets = np.asarray(n, float), np.asarray(loss, float), np.asarray(budgets)
  fig, ax = plt.subplots(figsize=(6, 4.2))
  labels = np.unique(budgets)
  colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(labels), 2)))
  for col, u in zip(colors, labels):
    g = budgets == u
    o = np.argsort(n[g])
    ax.plot(n[g][o], loss[g][o], "o", color=col, ms=4,
            label=f"C = {float(u):.2g}" if np.issubdtype(budgets.dtype, np.number) else str(u))
    nn = np.geomspace(n[g].min() / 1.5, n[g].max() * 1.5, 100)
    if law is not None and tokens_of is not None and np.issubdtype(budgets.dtype, np.number):
      p = law.params
      ax.plot(nn, laws.chinchilla(nn, tokens_of(nn, float(u)), p["A"], p["B"], p["E"],
                                  p["alpha"], p["beta"]), ":", color=col, lw=1)
  if fit is not None and "optima" in fit.extra:
    opt = np.asarray(fit.extra["optima"])
    par = np.asarray(fit.extra.get("parabolas", np.zeros((0, 6)))).reshape(-1, 6)
    for _, p2, p1, p0, lo, hi in par:  # over the budget's own range of log N
      x = np.linspace(lo, hi, 50)
      ax.plot(np.exp(x), p2 * x ** 2 + p1 * x + p0, "--", color="gray", lw=0.8)
    if opt.size:
      ax.scatter(opt[:, 1], opt[:, 3], marker="*", s=80, c="r", zorder=3, label="N* (parabola)")
  ax.legend(fontsize=7)
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("parameters N")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  return _save(fig, path)
