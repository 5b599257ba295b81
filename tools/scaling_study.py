"""A scaling-law study on this machine: train a μP LM ladder, fit the law, test extrapolation.

Expands the config file's `ladder(arg)` over its `get_config(arg)` base
(`jaxmtl.scaling.ladder`), trains every run one after another (resumable: run it again and
finished runs are skipped, interrupted ones resume from their checkpoints), collects the
held-out losses (bits per byte on the eval split) into `results.csv`, and then

* fits Chinchilla's L(N, D) = E + A/N^alpha + B/D^beta to the fitted runs as Epoch AI did
  (`fit_chinchilla`: Huber on log loss from their L-BFGS grid; Besiroglu et al. 2024,
  arXiv 2404.10102), with bootstrap standard errors;
* for an IsoFLOP ladder (`flop_budgets`), fits each budget's parabola in log N and the
  compute-optimal exponents N* ~ C^a, D* ~ C^b (Chinchilla approach 2, arXiv 2203.15556);
* predicts every held-out run (larger than any fitted one) from the fit and reports the
  error, with a bootstrap 90 % interval (the OLMo-ladder check, arXiv 2412.04403);
* writes `loss_vs_compute.png` (runs, held-out run and predicted value, the fit's
  compute-optimal frontier), `isoflop.png` (loss vs N per budget: data, parabolas, the law's
  curve), `results.json` and `results.md` into the workdir (and the PNGs into `--out`).

  python tools/scaling_study.py --config configs/ladder_lm.py --workdir runs/scaling_lm \
      --out docs/img
  python tools/scaling_study.py --config configs/ladder_lm.py:runlocal --workdir /tmp/sl
  python tools/scaling_study.py --config configs/ladder_lm.py:lr --workdir runs/ladder_lr \
      --sweep 'optim.lr=0.0078125,0.015625,0.03125' --no-fit      # μP transfer check

A persistent JAX compilation cache (`--compile-cache`, default `<workdir>/jax_cache`) lets
runs with identical programs (same width; the same schedule) and resumed runs skip XLA
compilation.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Sequence

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # threaded BLAS slows the fits ~15x here

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


def enable_compile_cache(path: str | pathlib.Path) -> None:
  from jaxmtl.cli import common
  common.enable_compilation_cache(path)


def _tokens_per_flop(rows: Sequence[dict[str, Any]]):
  """tokens_of(n, c) -> D for a budget c: D = c / FLOPs-per-token, FLOPs-per-token
  interpolated log-log in N over the runs (it depends on the shape, not only on N)."""
  n = np.array([r["N"] for r in rows], float)
  fpt = np.array([r["C"] / r["D"] for r in rows], float)
  order = np.argsort(n)
  ln, lf = np.log(n[order]), np.log(fpt[order])
  slope = np.polyfit(ln, lf, 1) if len(set(ln)) > 1 else (1.0, lf[0] - ln[0])

  def tokens_of(nn, c):
    lnn = np.log(np.asarray(nn, float))
    lf_ = np.where((lnn >= ln[0]) & (lnn <= ln[-1]), np.interp(lnn, ln, lf),
                   np.polyval(slope, lnn))
    return c / np.exp(lf_)
  return tokens_of


def _predict(fit, rows) -> list[dict[str, Any]]:
  """The fit's loss at each row's (N, D), its error, and a bootstrap 90 % interval."""
  from jaxmtl.scaling import laws
  out = []
  for r in rows:
    pred = float(laws.chinchilla(r["N"], r["D"], *(fit.params[k] for k in _CHIN)))
    samples = [laws.chinchilla(r["N"], r["D"], *(dict(zip(fit.params, s))[k] for k in _CHIN))
               for s in (fit.samples if fit.samples is not None else [])]
    lo, hi = (np.percentile(samples, [5, 95]).tolist() if len(samples) >= 2
              else [float("nan")] * 2)
    out.append({"name": r["name"], "N": r["N"], "D": r["D"], "C": r["C"],
                "actual": r["loss"], "predicted": pred, "error": pred - r["loss"],
                "rel_error": pred / r["loss"] - 1, "interval90": [lo, hi]})
  return out


_CHIN = ("A", "B", "E", "alpha", "beta")


def analyze(rows: Sequence[dict[str, Any]], spec: Any, out_dir: pathlib.Path, *,
            n_bootstrap: int = 20, grid_stride: int = 1, seed: int = 0,
            bootstrap_start: str = "fit") -> dict[str, Any]:
  """Fits, predictions and plots from collected rows; writes results.json / results.md /
  PNGs into `out_dir` and returns the summary."""
  from jaxmtl.scaling import fit as F
  from jaxmtl.scaling import laws, plots
  fit_rows = [r for r in rows if r["role"] == "fit"]
  held = [r for r in rows if r["role"] == "holdout"]
  if len(fit_rows) < 6:
    raise ValueError(f"the Chinchilla fit needs >= 6 finished fit runs, found {len(fit_rows)}")
  col = lambda rs, k: np.array([r[k] for r in rs], float)  # noqa: E731
  n, d, loss = col(fit_rows, "N"), col(fit_rows, "D"), col(fit_rows, "loss")
  t0 = time.perf_counter()
  starts = F.epoch_grid()[::max(grid_stride, 1)]
  chin = F.fit_chinchilla(n, d, loss, starts=starts, n_bootstrap=n_bootstrap, seed=seed,
                          bootstrap_start=bootstrap_start)
  p = chin.params
  fitted = laws.chinchilla(n, d, *(p[k] for k in _CHIN))
  summary: dict[str, Any] = {
      "chinchilla": chin.to_dict(), "fit_seconds": time.perf_counter() - t0,
      "fit_rms_rel_error": float(np.sqrt(np.mean((fitted / loss - 1) ** 2))),
      "fit_max_abs_rel_error": float(np.max(np.abs(fitted / loss - 1)))}
  preds = _predict(chin, held)
  summary["holdout"] = preds
  # A second extrapolation test from the fitted runs alone: fit without the largest budget,
  # predict its runs (3x more compute than any run left in that fit).
  budgets = col(fit_rows, "budget")
  top = budgets == budgets.max()
  if len(set(budgets)) > 1 and (~top).sum() >= 6:
    sub = F.fit_chinchilla(n[~top], d[~top], loss[~top], starts=starts,
                           n_bootstrap=n_bootstrap, seed=seed, bootstrap_start=bootstrap_start)
    summary["leave_top_budget_out"] = {
        "budget": float(budgets.max()), "chinchilla": sub.to_dict(),
        "predictions": _predict(sub, [r for r, t in zip(fit_rows, top) if t])}
  c_all = col(rows, "C_6ND")  # the closed form allocates C = 6 N D
  co = F.compute_optimal(chin, np.geomspace(c_all.min(), c_all.max(), 3))
  summary["compute_optimal"] = [
      {"C_6ND": float(c), "N_opt": float(a), "D_opt": float(b), "N_opt_se": float(se),
       "tokens_per_param": float(b / a)}
      for c, a, b, se in zip(co.c, co.n_opt, co.d_opt, co.n_opt_se)]
  iso = None
  if spec.budget_kind == "flop_budgets":
    # Runs lengthened to min_steps are off their budget: keep those within 10 % for approach 2.
    on = np.abs(col(fit_rows, "C") / budgets - 1) < 0.1
    try:
      iso = F.fit_isoflop(n[on], loss[on], col(fit_rows, "C")[on], budgets=budgets[on],
                          n_bootstrap=n_bootstrap, seed=seed)
      summary["isoflop"] = iso.to_dict()
    except ValueError as e:  # e.g. every parabola concave: report, do not fail the study
      summary["isoflop"] = {"error": str(e)}
  summary["figures"] = {}
  png = plots.plot_loss_vs_compute(
      col(fit_rows, "C_6ND"), loss, out_dir / "loss_vs_compute.png", fit=chin,
      groups=col(fit_rows, "width").astype(int), group_label="width ",
      heldout=((col(held, "C_6ND"), col(held, "loss"), [q["predicted"] for q in preds])
               if held else None),
      ylabel="held-out loss (bits/byte)", xlabel="compute 6ND (FLOPs)",
      title=f"Chinchilla fit: E={p['E']:.2f} A={p['A']:.3g} B={p['B']:.3g} "
            f"α={p['alpha']:.2f} β={p['beta']:.2f}")
  summary["figures"]["loss_vs_compute"] = str(png)
  png = plots.plot_isoflop(
      n, loss, budgets, out_dir / "isoflop.png", fit=iso, law=chin,
      tokens_of=_tokens_per_flop(rows) if spec.budget_kind == "flop_budgets" else
      (lambda nn, r: r * np.asarray(nn, float)),
      ylabel="held-out loss (bits/byte)",
      title="IsoFLOP curves (dotted: fitted law)" if spec.budget_kind == "flop_budgets"
      else "loss vs N per tokens/param (dotted: fitted law)")
  summary["figures"]["isoflop"] = str(png)
  (out_dir / "results.json").write_text(json.dumps({"rows": list(rows), **summary}, indent=2,
                                                   default=float))
  (out_dir / "results.md").write_text(markdown(rows, summary))
  return summary


def markdown(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
  """The study's tables: runs, fitted parameters +- SE, held-out predictions."""
  lines = ["| run | role | N | D | C (FLOPs) | tokens/param | steps | held-out bits/byte | s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['name']} | {r['role']} | {r['N']:,} | {r['D']:,} | {r['C']:.3g} | "
                 f"{r['tokens_per_param']:.1f} | {r['steps']} | {r['loss']:.4f} | "
                 f"{r['seconds']:.0f} |")
  chin = summary["chinchilla"]
  lines += ["", "| parameter | value | bootstrap SE |", "|---|---:|---:|"]
  for k, v in chin["params"].items():
    lines.append(f"| {k} | {v:.4g} | {chin['stderr'][k]:.3g} |")
  lines.append(f"\nfit: {chin['n_points']} runs, RMS relative error "
               f"{100 * summary['fit_rms_rel_error']:.2f} %, max "
               f"{100 * summary['fit_max_abs_rel_error']:.2f} %, "
               f"{chin['n_bootstrap']} bootstrap replicates")
  lines += ["", "| C (6ND) | N* (law) | ± SE | D* (law) | D*/N* |", "|---:|---:|---:|---:|---:|"]
  for q in summary["compute_optimal"]:
    lines.append(f"| {q['C_6ND']:.3g} | {q['N_opt']:,.0f} | {q['N_opt_se']:,.0f} | "
                 f"{q['D_opt']:,.0f} | {q['tokens_per_param']:.0f} |")
  iso = summary.get("isoflop")
  if iso and "params" in iso:
    lines += ["", "| IsoFLOP budget C | N* (parabola) | D* = C/(6N*) | loss at N* |",
              "|---:|---:|---:|---:|"]
    for c, nn, dd, ll in iso["extra"]["optima"]:
      lines.append(f"| {c:.3g} | {nn:,.0f} | {dd:,.0f} | {ll:.4f} |")
    lines.append(f"\nIsoFLOP (approach 2): N* ∝ C^{iso['params']['a']:.3f} "
                 f"(± {iso['stderr']['a']:.3f}), D* ∝ C^{iso['params']['b']:.3f}")
  elif iso:
    lines.append(f"\nIsoFLOP (approach 2): {iso['error']}")
  if summary["holdout"]:
    lines += ["", "| held-out run | N | D | actual | predicted | error | 90 % interval |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for q in summary["holdout"]:
      lo, hi = q["interval90"]
      lines.append(f"| {q['name']} | {q['N']:,} | {q['D']:,} | {q['actual']:.4f} | "
                   f"{q['predicted']:.4f} | {q['error']:+.4f} ({100 * q['rel_error']:+.2f} %) "
                   f"| [{lo:.4f}, {hi:.4f}] |")
  lt = summary.get("leave_top_budget_out")
  if lt:
    p = lt["chinchilla"]["params"]
    lines += ["", f"Fit without the C = {lt['budget']:.3g} runs (E={p['E']:.3f}, "
              f"α={p['alpha']:.3f}, β={p['beta']:.3f}), predicting them:", "",
              "| run | actual | predicted | error | 90 % interval |", "|---|---:|---:|---:|---|"]
    for q in lt["predictions"]:
      lo, hi = q["interval90"]
      lines.append(f"| {q['name']} | {q['actual']:.4f} | {q['predicted']:.4f} | "
                   f"{q['error']:+.4f} ({100 * q['rel_error']:+.2f} %) | [{lo:.4f}, {hi:.4f}] |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True, help="config file[:arg] with ladder(arg)")
  ap.add_argument("--workdir", required=True, help="study directory (resumable)")
  ap.add_argument("--out", default=None, help="also copy the PNGs here (e.g. docs/img)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="override a base-config key before the ladder is expanded")
  ap.add_argument("--bootstrap", type=int, default=20)
  ap.add_argument("--grid-stride", type=int, default=1,
                  help="use every K-th of Epoch's 4,500 starts")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--bootstrap-start", choices=("fit", "hoffmann"), default="fit",
                  help="start of each bootstrap refit (Epoch: hoffmann)")
  ap.add_argument("--no-train", action="store_true", help="only collect, fit and plot")
  ap.add_argument("--sweep", default=None,
                  help="cross every run with a sweep, e.g. 'optim.lr=0.0078125,0.015625'")
  ap.add_argument("--no-fit", action="store_true",
                  help="train and collect only (e.g. a learning-rate sweep)")
  ap.add_argument("--compile-cache", default="", help="JAX compilation cache dir ('none': off)")
  ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
  args = ap.parse_args(argv)
  from jaxmtl import config as config_lib
  from jaxmtl import launch as launch_lib
  from jaxmtl.scaling import ladder as ladder_lib
  workdir = pathlib.Path(args.workdir)
  try:
    base, spec = ladder_lib.load_ladder(args.config)
    config_lib.apply_overrides(base, {k: launch_lib.parse_value(v) for k, v in
                                      (kv.split("=", 1) for kv in args.set)})
    runs = ladder_lib.expand(base, spec,
                             launch_lib.parse_sweep(args.sweep) if args.sweep else None)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  workdir.mkdir(parents=True, exist_ok=True)
  if args.compile_cache != "none":
    enable_compile_cache(args.compile_cache or workdir / "jax_cache")
  timing = {}
  if not args.no_train:
    t0 = time.perf_counter()
    what = ladder_lib.run_local(base, runs, workdir / "runs", progress=args.progress,
                                log=lambda m: print(m, flush=True))
    timing = {"train_wall_seconds": time.perf_counter() - t0, "runs": what}
  rows = ladder_lib.collect(workdir / "runs")
  ladder_lib.write_csv(rows, workdir / "results.csv")
  if args.no_fit:
    for r in rows:
      print(f"{r['name']:40s} {r['role']:8s} N={r['N']:>8,} D={r['D']:>10,} "
            f"held-out bits/byte {r['loss']:.4f}")
    (workdir / "timing.json").write_text(json.dumps(timing, indent=2))
    return 0
  t0 = time.perf_counter()
  try:
    summary = analyze(rows, spec, workdir, n_bootstrap=args.bootstrap,
                      grid_stride=args.grid_stride, seed=args.seed,
                      bootstrap_start=args.bootstrap_start)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  timing["analysis_wall_seconds"] = time.perf_counter() - t0
  (workdir / "timing.json").write_text(json.dumps(timing, indent=2))
  if args.out:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = workdir.name
    for key, png in summary["figures"].items():
      shutil.copy(png, out / f"{stem}_{key}.png")
  print((workdir / "results.md").read_text())
  if timing.get("train_wall_seconds") is not None:
    print(f"training {timing['train_wall_seconds']:.0f} s, analysis "
          f"{timing['analysis_wall_seconds']:.0f} s; results in {workdir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
