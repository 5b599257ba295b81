"""μP coordinate check (Tensor Programs V, arXiv 2203.03466, App. D.1; microsoft/mup's
`mup/coord_check.py` plots): activation size vs width for the first training steps.

For each parametrization (SP, μP, and a deliberately broken μP whose hidden lr is ÷ m² instead
of ÷ m) trains models of several widths for a few Adam steps on one fixed batch, fits the slope
of log(size) vs log(width) per layer and step, and prints pass/fail (see
`jaxmtl.mup_tools.coord_verdict`). Writes `<out>/coord_<family>.json` and PNG grids
(`coord_<family>_size.png`: mean |h_t|; `coord_<family>_update.png` (MLP): the own-update
term mean |x_t (W_t - W_0)|).

  python tools/coord_check.py --family mlp --out docs/img
  python tools/coord_check.py --family transformer --out docs/img
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

FAMILIES = {
    # family: (dataset, widths, base width, batch, sequence length or None)
    "mlp": ("jaxmtl_multidigits", (64, 128, 256, 512, 1024), 64, 32, None),
    "transformer": ("jaxmtl_bytes", (64, 128, 256, 512), 64, 8, 64),
}


def family_config(family: str, param: str, lr: float, base_width: int, seed: int = 0):
  """ExperimentConfig of the coordinate check (Adam, constant lr, no weight decay)."""
  from jaxmtl import config as config_lib
  if family not in FAMILIES:
    raise ValueError(f"invalid family {family!r}; valid choices: {', '.join(FAMILIES)}")
  c = config_lib.default_config()
  c.seed = seed
  if family == "mlp":
    c.model.update(name="mlp", depth=3, activation="relu")
  else:
    c.model.update(name="transformer", depth=2, num_heads=4, max_len=128)
  c.model.base_width = base_width
  c.data.name = FAMILIES[family][0]
  c.mup.name = param
  c.optim.update(name="adam", lr=lr, schedule="constant", weight_decay=0.0)
  return config_lib.experiment_config(c)


def run(family: str, widths, steps: int, lr: float, batch_size: int, base_width: int,
        seq_len: int | None, out: pathlib.Path | None, data_dir: str | None = None) -> dict:
  """Records SP, μP and broken μP; returns {run: {"data", "verdict"}}."""
  from jaxmtl import mup_tools
  dataset = FAMILIES[family][0]
  batch = mup_tools.fixed_batch(dataset, batch_size, data_dir)
  if seq_len is not None:
    batch = {k: v[:, :seq_len + 1] for k, v in batch.items()}
  broken = lambda rules, width: mup_tools.broken_rules(rules, width, base_width)
  results = {}
  for name, param, rules_fn in (("SP", "sp", None), ("muP", "mup", None),
                                ("muP hidden lr/m^2", "mup", broken)):
    cfg = family_config(family, param, lr, base_width)
    if data_dir is not None:
      import dataclasses
      cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=data_dir))
    data = mup_tools.coord_data(cfg, widths, steps, batch, rules_fn)
    results[name] = {"data": data, "verdict": mup_tools.coord_verdict(data)}
  if out is not None:
    out.mkdir(parents=True, exist_ok=True)
    mup_tools.save_json({k: {"data": v["data"], "verdict": v["verdict"]} for k, v in
                         results.items()}, out / f"coord_{family}.json")
    runs = {k: v["data"] for k, v in results.items()}
    mup_tools.plot_coord(runs, out / f"coord_{family}_size.png", "size")
    if family == "mlp":
      mup_tools.plot_coord(runs, out / f"coord_{family}_update.png", "update")
  return results


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--family", default="mlp", choices=sorted(FAMILIES))
  ap.add_argument("--widths", default=None, help="comma-separated widths")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--batch_size", type=int, default=None)
  ap.add_argument("--out", default="runs/coord_check")
  args = ap.parse_args(argv)
  _, widths, base, batch, seq = FAMILIES[args.family]
  if args.widths:
    widths = tuple(int(w) for w in args.widths.split(","))
  t0 = time.time()
  res = run(args.family, widths, args.steps, args.lr, args.batch_size or batch, min(widths),
            seq, pathlib.Path(args.out))
  for name, r in res.items():
    v = r["verdict"]
    print(json.dumps({"run": name, "passed": v["passed"], "blowup": v["blowup"],
                      "max_slope": round(v["max_slope"], 3), "failures": len(v["failures"]),
                      "first_failures": v["failures"][:3]}))
  print(f"# {args.family} widths {list(widths)} steps {args.steps} lr {args.lr}: "
        f"{time.time() - t0:.0f} s")
  ok = res["muP"]["verdict"]["passed"] and res["SP"]["verdict"]["blowup"] and not (
      res["muP hidden lr/m^2"]["verdict"]["passed"])
  print("COORD CHECK", "OK" if ok else "FAILED")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
