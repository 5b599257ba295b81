"""μTransfer sweep: loss vs learning rate across widths, SP vs μP (TP-V arXiv 2203.03466, Fig. 1).

For every (parametrization, width, lr, seed) of the config's `sweep` block, trains the
config's experiment (widths overridden; μP base width `sweep.base_width`) with jaxmtl's own
train step and records the mean train loss of the last `sweep.avg_last` steps. Resumable:
each run writes `<workdir>/runs/<param>_w<width>_lr<log2 lr>_s<seed>.json` and is skipped when
that file exists. Writes `results.json` (optimal lr per width: grid and parabola-interpolated
in log2 lr), `results.md` (the table) and `curves.png` (one panel SP, one μP).

  python tools/mutransfer.py --config configs/mutransfer.py:mlp --workdir runs/mutransfer_mlp
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import numpy as np


def run_name(param: str, width: int, log2_lr: float, seed: int) -> str:
  return f"{param}_w{width}_lr{log2_lr:g}_s{seed}"


def sweep(c: Any, workdir: str | pathlib.Path, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the sweep of ConfigDict ``c`` (experiment keys + ``sweep``)."""
  from tqdm import tqdm

  from jaxmtl import config as config_lib
  from jaxmtl import mup_tools
  workdir = pathlib.Path(workdir)
  (workdir / "runs").mkdir(parents=True, exist_ok=True)
  c = c.copy_and_resolve_references()
  sw = c.sweep
  with c.unlocked():
    del c["sweep"]
  (workdir / "config.json").write_text(config_lib.to_json({**c.to_dict(), "sweep": sw.to_dict()}))
  grid = [(p, int(w), float(l), int(s)) for p in sw.params for w in sw.widths
          for l in sw.log2_lrs for s in sw.seeds]
  for p, w, l, s in tqdm(grid, desc="mutransfer", unit="run", disable=not progress):
    path = workdir / "runs" / f"{run_name(p, w, l, s)}.json"
    if path.exists():
      continue
    over = {"mup.name": p, "model.width": w, "model.base_width": int(sw.base_width),
            "optim.lr": 2.0 ** l, "seed": s}
    run_c = c.copy_and_resolve_references()
    config_lib.apply_overrides(run_c, over)
    t0 = time.time()
    losses = mup_tools.train_losses(config_lib.experiment_config(run_c))
    tail = losses[-int(sw.avg_last):]
    final = float(np.mean(tail)) if np.all(np.isfinite(tail)) else float("inf")
    path.write_text(json.dumps({"param": p, "width": w, "log2_lr": l, "seed": s, "loss": final,
                                "seconds": time.time() - t0, "curve": losses[::10]}))
  return summarize(workdir, sw)


def summarize(workdir: pathlib.Path, sw: Any) -> dict[str, Any]:
  from jaxmtl import mup_tools
  lrs = [2.0 ** float(l) for l in sw.log2_lrs]
  table: dict[str, Any] = {}
  for p in sw.params:
    losses = {}
    for w in sw.widths:
      losses[int(w)] = [float(np.mean([json.loads((workdir / "runs" / f"{run_name(p, int(w), float(l), int(s))}.json")
                                                 .read_text())["loss"] for s in sw.seeds]))
                        for l in sw.log2_lrs]
    table[p] = {"losses": {str(w): v for w, v in losses.items()},
                **mup_tools.transfer_summary(lrs, sw.widths, losses)}
  out = {"lrs": lrs, "widths": [int(w) for w in sw.widths], "params": table}
  mup_tools.save_json(out, workdir / "results.json")
  (workdir / "results.md").write_text(markdown_table(out))
  plot(out, workdir / "curves.png")
  return out


def markdown_table(out: dict[str, Any]) -> str:
  lines = ["| param | width | best lr (grid) | best lr (interp.) | loss at best |",
           "|---|---|---|---|---|"]
  for p, r in out["params"].items():
    for w in out["widths"]:
      b = r["per_width"][w]
      lines.append(f"| {p} | {w} | 2^{np.log2(b['grid']):.0f} | 2^{np.log2(b['interp']):.2f} | "
                   f"{b['loss']:.4f}{' (edge)' if b['edge'] else ''} |")
  for p, r in out["params"].items():
    lines.append(f"\n{p}: optimum moves {r['shift_grid']:.1f}x (grid), "
                 f"{r['shift_interp']:.2f}x (interpolated) over widths {out['widths']}")
  return "\n".join(lines) + "\n"


def plot(out: dict[str, Any], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  params = list(out["params"])
  fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.2), squeeze=False,
                           sharey=True)
  cmap = plt.get_cmap("viridis")
  for ax, p in zip(axes[0], params):
    for i, w in enumerate(out["widths"]):
      y = np.asarray(out["params"][p]["losses"][str(w)], np.float64)
      ax.plot(np.log2(out["lrs"]), np.where(np.isfinite(y), y, np.nan), marker=".",
              color=cmap(i / max(len(out["widths"]) - 1, 1)), label=f"width {w}")
    ax.set_title({"sp": "SP", "mup": "μP"}.get(p, p))
    ax.set_xlabel("log2 learning rate")
  axes[0][0].set_ylabel("train loss")
  finite = [v for r in out["params"].values() for c in r["losses"].values() for v in c
            if np.isfinite(v)]
  if finite:
    lo = min(finite)
    axes[0][0].set_ylim(lo - 0.05 * abs(lo), min(max(finite), lo + 2.0 * max(abs(lo), 0.5)))
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main():
  from absl import app, flags
  from ml_collections import config_flags
  cfg = config_flags.DEFINE_config_file("config", None, "configs/mutransfer.py[:arg]",
                                        lock_config=False)
  workdir = flags.DEFINE_string("workdir", None, "output directory (resumable)")
  flags.mark_flags_as_required(["config", "workdir"])

  def _main(argv):
    del argv
    out = sweep(cfg.value, workdir.value)
    print(markdown_table(out))
  app.run(_main)


if __name__ == "__main__":
  main()
