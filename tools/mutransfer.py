"""μTransfer sweep: loss vs learning rate across widths, SP vs μP (TP-V arXiv 2203.03466, Fig. 1).

For every (parametrization, width, lr, seed) of the config's `sweep` block, trains the
config's experiment (widths overridden; μP base width `sweep.base_width`) with jaxmtl's own
train step (`train.loop.build` / `init_state` / `compile_train_step`) and records the mean
train loss of the last `sweep.avg_last` steps. Runs with the same seed read the same batches
(the library's `BatchIterator`, read once per seed and reused). Resumable: each run writes
`<workdir>/runs/<param>_w<width>_lr<log2 lr>_s<seed>.json` and is skipped when that file
exists. Writes `results.json` (per parametrization and width: loss per lr, mean and std over
seeds; grid and parabola-interpolated optimal lr; the optimum's shift over the widths; the
acceptance verdict), `results.md` (tables) and `curves.png` (loss vs lr per width, one panel
per parametrization, and the optimal lr vs width).

  python tools/mutransfer.py --config configs/mutransfer.py:mlp --workdir runs/mutransfer_mlp
  python tools/mutransfer.py --config configs/mutransfer.py:mlp --workdir runs/mt \\
      --config.sweep.seeds=0,1 --config.train.steps=600      # any key can be overridden
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import numpy as np

NAMES = {"sp": "SP", "mup": "μP", "mup_tp5": "μP (TP-V Table 3)", "depth_mup": "depth-μP"}


def run_name(param: str, width: int, log2_lr: float, seed: int) -> str:
  return f"{param}_w{width}_lr{log2_lr:g}_s{seed}"


def _run_config(c: Any, p: str, w: int, l: float, s: int, base_width: int):
  from jaxmtl import config as config_lib
  run_c = c.copy_and_resolve_references()
  config_lib.apply_overrides(run_c, {"mup.name": p, "model.width": w,
                                     "model.base_width": int(base_width),
                                     "optim.lr": 2.0 ** l, "seed": s})
  return config_lib.experiment_config(run_c)


def same_as_sp(cfg: Any, sp_cfg: Any) -> bool:
  """True when run ``cfg`` trains exactly like ``sp_cfg`` (the same run under SP): same module
  graph (with its static multipliers and attention scales), same rules and optimizer. That is
  every μP variant at the base width, where the sweep then reuses the SP run."""
  from jaxmtl import tasks as tasks_lib
  from jaxmtl.models import abstract_model
  if cfg.optim != sp_cfg.optim or cfg.model != sp_cfg.model or cfg.data != sp_cfg.data:
    return False
  spec = tasks_lib.data_spec(cfg.data.name, cfg.data.data_dir, cfg.data.tasks)
  outputs = {t.name: t.num_outputs for t in spec.tasks}
  a = abstract_model(cfg.model, spec.input_shape, outputs, cfg.mup)
  b = abstract_model(sp_cfg.model, spec.input_shape, outputs, sp_cfg.mup)
  return a[0] == b[0] and a[3] == b[3]


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
  batches: dict[int, list] = {}  # seed -> the batches every run with that seed reads
  todo = [g for g in grid if not (workdir / "runs" / f"{run_name(*g)}.json").exists()]
  todo.sort(key=lambda g: g[0] != "sp")  # SP first: μP at the base width reuses its runs
  for p, w, l, s in tqdm(todo, desc="mutransfer", unit="run", disable=not progress):
    cfg = _run_config(c, p, w, l, s, sw.base_width)
    sp_file = workdir / "runs" / f"{run_name('sp', w, l, s)}.json"
    if p != "sp" and w == int(sw.base_width) and sp_file.exists() and same_as_sp(
        cfg, _run_config(c, "sp", w, l, s, sw.base_width)):
      rec = {**json.loads(sp_file.read_text()), "param": p, "same_as": sp_file.name}
    else:
      if s not in batches:
        batches[s] = mup_tools.run_batches(cfg)
      t0 = time.time()
      losses = mup_tools.train_losses(cfg, batches[s])
      tail = losses[-int(sw.avg_last):]
      final = float(np.mean(tail)) if np.all(np.isfinite(tail)) else float("inf")
      rec = {"param": p, "width": w, "log2_lr": l, "seed": s, "loss": final,
             "seconds": time.time() - t0, "curve": losses[::10]}
    (workdir / "runs" / f"{run_name(p, w, l, s)}.json").write_text(json.dumps(rec))
  return summarize(workdir, sw)


def summarize(workdir: pathlib.Path, sw: Any) -> dict[str, Any]:
  """Reads the runs of sweep block ``sw`` and writes results.json, results.md, curves.png."""
  from jaxmtl import mup_tools
  workdir = pathlib.Path(workdir)
  lrs = [2.0 ** float(l) for l in sw.log2_lrs]
  widths = [int(w) for w in sw.widths]
  table: dict[str, Any] = {}
  for p in sw.params:
    mean, std, per_seed = {}, {}, {}
    for w in widths:
      runs = np.array([[json.loads((workdir / "runs" / f"{run_name(p, w, float(l), int(s))}.json")
                                   .read_text())["loss"] for s in sw.seeds] for l in sw.log2_lrs])
      finite = np.all(np.isfinite(runs), axis=1)  # a diverged seed makes the point diverged
      mean[w] = np.where(finite, np.mean(np.where(np.isfinite(runs), runs, 0), 1), np.inf).tolist()
      std[w] = np.where(finite, np.std(np.where(np.isfinite(runs), runs, 0), 1), np.nan).tolist()
      per_seed[w] = [mup_tools.optimal_lr(lrs, runs[:, i])["grid"] for i in range(runs.shape[1])]
    table[p] = {"losses": {str(w): v for w, v in mean.items()},
                "losses_std": {str(w): v for w, v in std.items()},
                "best_lr_per_seed": {str(w): v for w, v in per_seed.items()},
                **mup_tools.transfer_summary(
                    lrs, widths, mean, int(sw.base_width) if int(sw.base_width) in widths
                    else None)}
  verdict = mup_tools.transfer_verdict({p: table[p] for p in table})
  out = {"lrs": lrs, "widths": widths, "seeds": [int(s) for s in sw.seeds],
         "base_width": int(sw.base_width), "params": table, "verdict": verdict}
  mup_tools.save_json(out, workdir / "results.json")
  (workdir / "results.md").write_text(markdown_table(out))
  plot(out, workdir / "curves.png")
  return out


def _pow2(x: float, digits: int = 2) -> str:
  return "–" if not np.isfinite(x) else f"2^{np.log2(x):.{digits}f}"


def markdown_table(out: dict[str, Any]) -> str:
  lines = ["| param | width | best lr (grid) | best lr (interp.) | loss at best | "
           "loss at the base width's best lr | best lr per seed |",
           "|---|---|---|---|---|---|---|"]
  for p, r in out["params"].items():
    for w in out["widths"]:
      b = r["per_width"][w]
      seeds = ", ".join(_pow2(v, 0) for v in r["best_lr_per_seed"][str(w)])
      lines.append(f"| {p} | {w} | {_pow2(b['grid'], 0)} | {_pow2(b['interp'])} | "
                   f"{b['loss']:.4f}{' (edge)' if b['edge'] else ''} | "
                   f"{b['loss'] + r['regret'][w]:.4f} | {seeds} |")
  lines.append("")
  for p, r in out["params"].items():
    lines.append(f"- {p}: optimum moves {r['shift_grid']:g}x (grid), {r['shift_interp']:.2f}x "
                 f"(interpolated) over widths {out['widths'][0]}..{out['widths'][-1]}")
  v = out["verdict"]
  lines.append(f"- verdict (μP moves <= 2x, SP >= 4x): {'PASS' if v['passed'] else 'FAIL'}"
               + (f" ({'; '.join(v['reasons'])})" if v["reasons"] else ""))
  return "\n".join(lines) + "\n"


def plot(out: dict[str, Any], path: pathlib.Path) -> None:
  """One panel per parametrization (loss vs log2 lr, a line per width, ±1 std over seeds,
  the interpolated optimum marked), and one of the optimal lr against width."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  params = list(out["params"])
  fig, axes = plt.subplots(1, len(params) + 1, figsize=(4.0 * (len(params) + 1), 3.3),
                           squeeze=False)
  axes = axes[0]
  cmap = plt.get_cmap("viridis")
  x = np.log2(out["lrs"])
  widths = out["widths"]
  finite = [v for r in out["params"].values() for c in r["losses"].values() for v in c
            if np.isfinite(v)]
  bests = [b["loss"] for r in out["params"].values() for b in r["per_width"].values()
           if np.isfinite(b["loss"])]
  for ax, p in zip(axes, params):
    r = out["params"][p]
    for i, w in enumerate(widths):
      color = cmap(i / max(len(widths) - 1, 1))
      y = np.asarray(r["losses"][str(w)], np.float64)
      y = np.where(np.isfinite(y), y, np.nan)
      sd = np.asarray(r["losses_std"][str(w)], np.float64)
      ax.plot(x, y, marker=".", color=color, label=f"width {w}")
      ax.fill_between(x, y - sd, y + sd, color=color, alpha=0.15, lw=0)
      b = r["per_width"][w]
      if np.isfinite(b["interp"]):
        ax.axvline(np.log2(b["interp"]), color=color, lw=0.7, ls=":")
    ax.set_title(f"{NAMES.get(p, p)}: optimum moves {r['shift_grid']:g}x", fontsize=9)
    ax.set_xlabel("log2 learning rate")
    if bests:  # every width's minimum in view, and the curves around it
      lo, hi = min(bests), max(bests)
      ax.set_ylim(lo - 0.05 * abs(lo), min(max(finite), hi + 0.6 * (hi - lo) + 0.3))
  axes[0].set_ylabel("train loss")
  axes[0].legend(fontsize=7)
  ax = axes[-1]
  for p in params:
    per = out["params"][p]["per_width"]
    ax.plot(widths, [np.log2(per[w]["interp"]) for w in widths], marker="o",
            label=f"{NAMES.get(p, p)} (interp.)")
    ax.plot(widths, [np.log2(per[w]["grid"]) for w in widths], ls="none", marker="x",
            color=ax.lines[-1].get_color())
  ax.set_xscale("log", base=2)
  ax.set_xlabel("width")
  ax.set_ylabel("log2 optimal lr (x: grid)")
  ax.set_title("optimal lr vs width", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main():
  from absl import app, flags
  from ml_collections import config_flags
  cfg = config_flags.DEFINE_config_file("config", None, "configs/mutransfer.py[:arg]",
                                        lock_config=False)
  workdir = flags.DEFINE_string("workdir", None, "output directory (resumable)")
  cache = flags.DEFINE_bool("compilation_cache", True,
                            "persistent XLA cache in <workdir>/xla_cache: runs that differ only "
                            "in seed (train step) or lr (init) then compile once")
  flags.mark_flags_as_required(["config", "workdir"])

  def _main(argv):
    del argv
    from jaxmtl.cli import common
    common.quiet_logging(flags.FLAGS["verbosity"].present)
    if cache.value:
      common.enable_compilation_cache(pathlib.Path(workdir.value) / "xla_cache")
    t0 = time.time()
    out = sweep(cfg.value, workdir.value)
    print(markdown_table(out))
    print(f"# {time.time() - t0:.0f} s; {workdir.value}/results.md, results.json, curves.png")
  app.run(_main)


if __name__ == "__main__":
  main()
