"""``jaxmtl-fit``: fit a scaling law to a CSV of runs; print params +- SE, write JSON and PNG.

Usage::

  jaxmtl-fit --data results.csv --form chinchilla|kaplan|power_law|isoflop|loss_to_loss \
      [--out DIR] [--bootstrap N] [--seed S]

Columns each form needs (header names, case-sensitive; all values must be > 0):

  chinchilla    N, loss, and D or C (D = C / (6 N))   [--method huber|mle, --exclude-highest K,
                                                       --grid-stride K]
  kaplan        N, D, loss                            (Kaplan eq. 1.5; --offset adds E)
  power_law     x, y, optional sigma (std of log y)   (--offset: y = E + A x^-alpha)
  isoflop       N, loss, C                            (budgets grouped within 10 % of C)
  loss_to_loss  L_x, L_y                              (--E-x / --E-y fix the offsets)

Writes DIR/fit_<form>.json (parameters, standard errors, settings) and DIR/fit_<form>.png.
Malformed input gives a one-line error and exit status 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
from typing import Sequence

import numpy as np

FORMS = {
    "chinchilla": ("N", "loss"),
    "kaplan": ("N", "D", "loss"),
    "power_law": ("x", "y"),
    "isoflop": ("N", "loss", "C"),
    "loss_to_loss": ("L_x", "L_y"),
}
MIN_POINTS = {"chinchilla": 6, "kaplan": 5, "power_law": 2, "isoflop": 6, "loss_to_loss": 3}


class InputError(ValueError):
  pass


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxmtl-fit", description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True, help="CSV file with a header row")
  p.add_argument("--form", required=True, choices=sorted(FORMS))
  p.add_argument("--out", default=".", help="output directory (JSON + PNG)")
  p.add_argument("--bootstrap", type=int, default=0, help="bootstrap replicates for SEs")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--method", choices=("huber", "mle"), default="huber")
  p.add_argument("--exclude-highest", type=int, default=0,
                 help="chinchilla: drop the K highest-loss points (Epoch AI used 5)")
  p.add_argument("--grid-stride", type=int, default=1,
                 help="chinchilla: use every K-th of Epoch's 4,500 starts")
  p.add_argument("--offset", action="store_true", help="kaplan/power_law: add offset E")
  p.add_argument("--E-x", dest="e_x", type=float, default=None)
  p.add_argument("--E-y", dest="e_y", type=float, default=None)
  return p


def read_columns(path: str, form: str) -> dict[str, np.ndarray]:
  """Read the CSV and validate the columns `form` needs; raises InputError with the reason."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise InputError(f"--data {path}: no such file")
  with p.open(newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    rows = list(reader)
  need = list(FORMS[form])
  if form == "chinchilla":
    if "D" in header:
      need.append("D")
    elif "C" in header:
      need.append("C")
    else:
      need.append("D")
  optional = [c for c in ("sigma",) if form == "power_law" and c in header]
  missing = [c for c in need if c not in header]
  if missing:
    extra = " (or C instead of D)" if form == "chinchilla" else ""
    raise InputError(f"form {form!r} needs columns {need}{extra}; missing {missing}; "
                     f"the file has {header}")
  cols: dict[str, np.ndarray] = {}
  for c in need + optional:
    vals = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
      raw = (row.get(c) or "").strip()
      try:
        v = float(raw)
      except ValueError:
        raise InputError(f"row {i}, column {c!r}: {raw!r} is not a number") from None
      if not np.isfinite(v) or v <= 0:
        raise InputError(f"row {i}, column {c!r}: value {raw} must be finite and > 0")
      vals.append(v)
    cols[c] = np.array(vals)
  if len(rows) < MIN_POINTS[form]:
    raise InputError(f"form {form!r} needs at least {MIN_POINTS[form]} rows, got {len(rows)}")
  if "C" in cols and "D" not in cols and form == "chinchilla":
    cols["D"] = cols["C"] / (6 * cols["N"])
  return cols


def run(args: argparse.Namespace) -> dict:
  from jaxmtl.scaling import fit as F
  from jaxmtl.scaling import laws, plots
  cols = read_columns(args.data, args.form)
  out = pathlib.Path(args.out)
  png = out / f"fit_{args.form}.png"
  kw = dict(n_bootstrap=args.bootstrap, seed=args.seed)
  if args.form == "chinchilla":
    keep = F.epoch_outlier_mask(cols["loss"], args.exclude_highest)
    n, d, loss = cols["N"][keep], cols["D"][keep], cols["loss"][keep]
    res = F.fit_chinchilla(n, d, loss, method=args.method,
                           starts=F.epoch_grid()[::max(args.grid_stride, 1)], **kw)
    p = res.params
    plots.plot_loss_vs_compute(6 * n * d, loss, png, fit=res, title="Chinchilla fit")
  elif args.form == "kaplan":
    form = "nd_offset" if args.offset else "nd"
    res = F.fit_kaplan(cols["loss"], n=cols["N"], d=cols["D"], form=form, **kw)
    p = res.params
    pred = laws.kaplan_nd(cols["N"], cols["D"], p["N_c"], p["D_c"], p["alpha_N"],
                          p["alpha_D"], p.get("E", 0.0))
    plots.plot_fit_vs_data(cols["loss"], pred, png, title=f"Kaplan {form}")
  elif args.form == "power_law":
    res = F.fit_power_law(cols["x"], cols["y"], offset=args.offset, sigma=cols.get("sigma"),
                          **kw)
    p = res.params
    pred = (laws.power_law(cols["x"], p["A"], p["alpha"], p["E"]) if args.offset
            else laws.power_law(cols["x"], p["k"], -p["a"]))
    plots.plot_fit_vs_data(cols["y"], pred, png, title="power law")
  elif args.form == "isoflop":
    res = F.fit_isoflop(cols["N"], cols["loss"], cols["C"], **kw)
    plots.plot_isoflop(cols["N"], cols["loss"], F.group_budgets(cols["C"]), png, fit=res,
                       title="IsoFLOP")
  else:
    res = F.fit_loss_to_loss(cols["L_x"], cols["L_y"], E_x=args.e_x, E_y=args.e_y, **kw)
    p = res.params
    pred = laws.loss_to_loss(cols["L_x"], p["K"], p["kappa"], p.get("E_x", args.e_x),
                             p.get("E_y", args.e_y))
    plots.plot_fit_vs_data(cols["L_y"], pred, png, title="loss-to-loss")
  summary = res.to_dict()
  summary.update(data=str(args.data), png=str(png))
  out.mkdir(parents=True, exist_ok=True)
  (out / f"fit_{args.form}.json").write_text(json.dumps(summary, indent=2))
  return summary


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if args.bootstrap < 0:
    print("error: --bootstrap must be >= 0", file=sys.stderr)
    return 2
  try:
    summary = run(args)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{summary['form']} fit on {summary['n_points']} points:")
  for k, v in summary["params"].items():
    print(f"  {k:>8s} = {v:.6g} +- {summary['stderr'][k]:.3g}")
  print(f"wrote {pathlib.Path(args.out) / ('fit_' + args.form + '.json')} and {summary['png']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
