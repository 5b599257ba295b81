"""MTL methods benchmark: single-task baselines and every method over seeds, one table + plot.

For every seed of the config's `benchmark` block, trains each single-task baseline
(`data.tasks=(task,)`) and each method (see `method_overrides`) with the real training loop
(`jaxmtl.train.loop.train`, one workdir per run: `<workdir>/runs/<method>/seed_<s>`), and reads
the final test metrics. Resumable: a run whose `results.json` exists is skipped; an interrupted
run resumes from its last checkpoint (the loop's own resume); a run directory whose
`config.json` differs from the run's config stops the benchmark (stale results).

Per method: test accuracy and loss of each task (mean ± std over seeds), Δm% (Navon et al.,
arXiv 2202.01017, Sec. 6: mean relative accuracy drop against the single-task baselines'
seed-mean, computed per seed, then mean ± std; lower is better, negative beats single-task),
and the median train step time of the loop (from `metrics.jsonl`; it includes the input
pipeline, so see `tools/bench_mtl.py` for isolated step-time ratios). Writes
`<workdir>/benchmark.json`, `benchmark.md` and `benchmark.png` (Δm% per method, and the two
tasks' accuracies); `--update_docs docs/mtl.md` replaces the text between
`<!-- mtl_benchmark:begin -->` and `<!-- mtl_benchmark:end -->` with the table, the plot
(copied to `docs/img/mtl_multidigits.png`) and the command.

  python tools/mtl_benchmark.py --config configs/mtl_multidigits.py --workdir runs/mtl_md \\
      --update_docs docs/mtl.md
  python tools/mtl_benchmark.py --config configs/mtl_multidigits.py:runlocal --workdir /tmp/md
  python tools/mtl_benchmark.py --config configs/mtl_multidigits.py --workdir runs/mtl_md \\
      --config.benchmark.seeds=0 --config.train.steps=300   # any key can be overridden
"""
from __future__ import annotations

import json
import pathlib
import shutil
import statistics
import sys
import time
from typing import Any

import numpy as np

BEGIN, END = "<!-- mtl_benchmark:begin -->", "<!-- mtl_benchmark:end -->"
FAMILIES = ("single task", "loss weighting", "params", "gramian", "ghost", "features")


def method_overrides(name: str) -> tuple[str, dict[str, Any]]:
  """Method name -> (family, `mtl.*` overrides).

  A loss weighting by name ("sum", "mean", "uw", "gradnorm", "db_mtl", ...), "gradnorm@features";
  an aggregator as "<aggregator>@params" (`mtl.jacobian="full"`), "@gramian", "@ghost"
  (`mtl.jacobian="ghost"`) or "@features".
  """
  from jaxmtl.mtl import aggregators as agg_lib
  from jaxmtl.mtl import weighting as w_lib
  base, _, mode = name.partition("@")
  weightings = set(w_lib.WEIGHTINGS) | {"sum", "mean"}
  if not mode and base in weightings:
    return "loss weighting", {"mtl.weighting": base}
  if base == "gradnorm" and mode == "features":
    return "features", {"mtl.weighting": "gradnorm", "mtl.mode": "features"}
  if base in agg_lib.AGGREGATORS and mode in ("params", "gramian", "ghost", "features"):
    over = {"mtl.aggregator": base}
    if mode in ("gramian", "ghost"):
      over["mtl.jacobian"] = mode
    if mode == "features":
      over["mtl.mode"] = "features"
    return mode, over
  raise ValueError(f"unknown benchmark method {name!r}; valid: a loss weighting "
                   f"{sorted(weightings)}, 'gradnorm@features', or '<aggregator>@params|gramian|"
                   f"ghost|features' with aggregator in {sorted(agg_lib.AGGREGATORS)}")


def _names(value: Any) -> tuple:
  """A tuple from a config value: a sequence, or comma-separated command-line strings
  (`--config.benchmark.methods=sum,upgrad@params` arrives as one string in a tuple)."""
  if isinstance(value, (str, int)):
    value = (value,)
  out = []
  for v in value:
    out.extend([w.strip() for w in v.split(",") if w.strip()] if isinstance(v, str) else [v])
  return tuple(out)


def normalize(bench: Any) -> Any:
  """The `benchmark` block with seeds (ints), baselines and methods (names) as tuples."""
  bench = bench.copy_and_resolve_references()
  bench.seeds = tuple(int(s) for s in _names(bench.seeds))
  bench.baselines = _names(bench.baselines)
  bench.methods = _names(bench.methods)
  return bench


def plan(bench: Any) -> list[tuple[str, str, int, dict[str, Any]]]:
  """[(name, family, seed, overrides)] for the baselines first, then every method."""
  bench = normalize(bench)
  runs = []
  for s in bench.seeds:
    for task in bench.baselines:
      runs.append((f"stl_{task}", "single task", s,
                   {"data.tasks": (task,), "mtl.weighting": "sum"}))
  for name in bench.methods:
    family, over = method_overrides(name)
    runs.extend((name, family, s, over) for s in bench.seeds)
  return runs


def _step_ms(run_dir: pathlib.Path) -> float:
  """Median train step time (ms) over the logged windows of the run's metrics.jsonl."""
  from jaxmtl.metric_writers import read_jsonl
  rates = [r["train/steps_per_sec"] for r in read_jsonl(run_dir / "metrics.jsonl")
           if "train/steps_per_sec" in r]
  return 1e3 / statistics.median(rates) if rates else float("nan")


def run_all(c: Any, workdir: str | pathlib.Path, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) every run of ConfigDict `c` (experiment keys + `benchmark`)."""
  from tqdm import tqdm

  from jaxmtl import config as config_lib
  from jaxmtl.train import loop
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  c = c.copy_and_resolve_references()
  bench = normalize(c.benchmark)
  with c.unlocked():
    del c["benchmark"]
  (workdir / "config.json").write_text(
      config_lib.to_json({**c.to_dict(), "benchmark": bench.to_dict()}))
  records = []
  runs = plan(bench)
  bar = tqdm(runs, desc="mtl benchmark", unit="run", disable=not progress)
  for name, family, seed, over in bar:
    bar.set_postfix(run=f"{name}/s{seed}")
    run_dir = workdir / "runs" / name / f"seed_{seed}"
    run_c = c.copy_and_resolve_references()
    config_lib.apply_overrides(run_c, {**over, "seed": seed})
    cfg = config_lib.experiment_config(run_c)
    results = run_dir / "results.json"
    if (run_dir / "config.json").exists() and (
        (run_dir / "config.json").read_text() != config_lib.to_json(cfg)):
      raise SystemExit(f"{run_dir} holds a run of a different config; remove it or use "
                       "another --workdir")
    t0 = time.time()
    if not results.exists():
      loop.train(cfg, run_dir)
    out = json.loads(results.read_text())
    records.append({"method": name, "family": family, "seed": seed,
                    "eval": out["eval"], "step_ms": _step_ms(run_dir),
                    "seconds": time.time() - t0})
  return summarize(records, bench, workdir)


def summarize(records: list[dict], bench: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Aggregates the runs: per method and task, mean ± std over seeds; Δm% against STL."""
  from jaxmtl.mtl.metrics import delta_m
  tasks = list(bench.baselines)
  stl = {t: float(np.mean([r["eval"][f"{t}/accuracy"] for r in records
                           if r["method"] == f"stl_{t}"])) for t in tasks}
  flags = {f"{t}/accuracy": True for t in tasks}
  order, rows = [], {}
  for r in records:
    if r["method"] not in rows:
      order.append(r["method"])
      rows[r["method"]] = {"method": r["method"], "family": r["family"], "seeds": [],
                           "per_seed": []}
    rows[r["method"]]["per_seed"].append(r)
    rows[r["method"]]["seeds"].append(r["seed"])
  table = []
  for name in order:
    row, per = rows[name], rows[name]["per_seed"]
    out = {"method": name, "family": row["family"], "seeds": row["seeds"]}
    for t in tasks:
      for m in ("accuracy", "loss"):
        vals = [p["eval"][f"{t}/{m}"] for p in per if f"{t}/{m}" in p["eval"]]
        out[f"{t}/{m}"] = _mean_std(vals)
    if row["family"] != "single task":
      dms = [delta_m({k: p["eval"][k] for k in flags}, {f"{t}/accuracy": stl[t] for t in tasks},
                     flags) for p in per]
      out["delta_m"] = _mean_std(dms)
      out["delta_m_per_seed"] = dms
    out["step_ms"] = _mean_std([p["step_ms"] for p in per])
    table.append(out)
  summary = {"tasks": tasks, "stl_accuracy": stl, "rows": table,
             "seeds": [int(s) for s in bench.seeds]}
  (workdir / "benchmark.json").write_text(json.dumps(summary, indent=2))
  (workdir / "benchmark.md").write_text(markdown_table(summary))
  plot(summary, workdir / "benchmark.png")
  return summary


def _mean_std(vals: list[float]) -> list[float]:
  vals = [float(v) for v in vals]
  if not vals:
    return [float("nan"), float("nan")]
  return [float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0]


def _pm(ms: list[float], scale: float = 1.0, digits: int = 2) -> str:
  m, s = ms
  return "–" if not np.isfinite(m) else f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def markdown_table(summary: dict[str, Any]) -> str:
  tasks = summary["tasks"]
  head = ("| method | family | " + " | ".join(f"{t} acc. (%)" for t in tasks) + " | "
          + " | ".join(f"{t} loss" for t in tasks) + " | Δm% ↓ | step (ms) |")
  lines = [head, "|" + "---|" * 2 + "---:|" * (2 * len(tasks) + 2)]
  for r in summary["rows"]:
    accs = " | ".join(_pm(r[f"{t}/accuracy"], 100) for t in tasks)
    losses = " | ".join(_pm(r[f"{t}/loss"], 1, 3) for t in tasks)
    dm = _pm(r["delta_m"]) if "delta_m" in r else "0 (reference)"
    lines.append(f"| {r['method']} | {r['family']} | {accs} | {losses} | {dm} | "
                 f"{_pm(r['step_ms'], 1, 1)} |")
  return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: pathlib.Path) -> None:
  """Δm% per method (mean ± std over seeds, coloured by family) and the two tasks' accuracies."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tasks = summary["tasks"]
  rows = [r for r in summary["rows"] if "delta_m" in r]
  rows.sort(key=lambda r: r["delta_m"][0])
  colors = dict(zip(FAMILIES, plt.get_cmap("tab10").colors))
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.22 * len(rows) + 1)),
                                 gridspec_kw={"width_ratios": [1.3, 1]})
  y = np.arange(len(rows))
  ax1.barh(y, [r["delta_m"][0] for r in rows], xerr=[r["delta_m"][1] for r in rows],
           color=[colors[r["family"]] for r in rows], capsize=2)
  ax1.set_yticks(y, [r["method"] for r in rows], fontsize=7)
  ax1.invert_yaxis()
  ax1.axvline(0, color="k", lw=0.8)
  ax1.set_xlabel("Δm% vs single-task (lower is better)")
  ax1.grid(axis="x", alpha=0.3)
  for fam in FAMILIES[1:]:
    if any(r["family"] == fam for r in rows):
      ax1.barh([0], [0], color=colors[fam], label=fam)
  ax1.legend(fontsize=7, loc="best", framealpha=0.9)
  if len(tasks) >= 2:
    a, b = tasks[:2]
    for r in rows:
      (xa, xs), (ya, ys) = r[f"{a}/accuracy"], r[f"{b}/accuracy"]
      ax2.errorbar(100 * xa, 100 * ya, xerr=100 * xs, yerr=100 * ys, fmt="o", ms=3,
                   color=colors[r["family"]], alpha=0.8, elinewidth=0.6)
      ax2.annotate(r["method"], (100 * xa, 100 * ya), fontsize=5, alpha=0.8,
                   xytext=(2, 2), textcoords="offset points")
    ax2.plot(100 * summary["stl_accuracy"][a], 100 * summary["stl_accuracy"][b], "k*", ms=9,
             label="single-task models")
    ax2.axvline(100 * summary["stl_accuracy"][a], color="k", ls=":", lw=0.8)
    ax2.axhline(100 * summary["stl_accuracy"][b], color="k", ls=":", lw=0.8)
    ax2.set_xlabel(f"{a} test accuracy (%)")
    ax2.set_ylabel(f"{b} test accuracy (%)")
    ax2.set_title("mean over seeds (bars: std)", fontsize=9)
    ax2.legend(fontsize=7, loc="lower left")
    ax2.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def update_docs(doc: pathlib.Path, workdir: pathlib.Path, command: str) -> None:
  """Replaces the marked block of `doc` with the table, the plot and the command."""
  text = doc.read_text()
  if BEGIN not in text or END not in text:
    raise SystemExit(f"{doc} has no {BEGIN} ... {END} block to replace")
  img = doc.parent / "img" / "mtl_multidigits.png"
  img.parent.mkdir(exist_ok=True)
  shutil.copyfile(workdir / "benchmark.png", img)
  summary = json.loads((workdir / "benchmark.json").read_text())
  stl = ", ".join(f"{t} {100 * a:.2f}%" for t, a in summary["stl_accuracy"].items())
  block = (f"{BEGIN}\n`{command}`\n\nSeeds {summary['seeds']}; single-task test accuracy "
           f"(seed mean, the Δm% reference): {stl}.\n\n"
           + (workdir / "benchmark.md").read_text()
           + f"\n![Δm% per method and per-task accuracy](img/{img.name})\n{END}")
  head, rest = text.split(BEGIN, 1)
  doc.write_text(head + block + rest.split(END, 1)[1])


def main():
  from absl import app, flags
  from ml_collections import config_flags
  cfg = config_flags.DEFINE_config_file("config", None, "configs/mtl_multidigits.py[:arg]",
                                        lock_config=False)
  workdir = flags.DEFINE_string("workdir", None, "output directory (resumable)")
  docs = flags.DEFINE_string("update_docs", None, "markdown file whose mtl_benchmark block to "
                             "replace (e.g. docs/mtl.md)")
  cache = flags.DEFINE_bool("compilation_cache", True,
                            "persistent XLA cache in <workdir>/xla_cache: the seeds of a method "
                            "compile its train step once")
  flags.mark_flags_as_required(["config", "workdir"])

  def _main(argv):
    del argv
    from jaxmtl.cli import common
    common.quiet_logging(flags.FLAGS["verbosity"].present)
    if cache.value:
      common.enable_compilation_cache(pathlib.Path(workdir.value) / "xla_cache")
    t0 = time.time()
    summary = run_all(cfg.value, workdir.value)
    print(markdown_table(summary))
    print(f"# {time.time() - t0:.0f} s; {workdir.value}/benchmark.md, benchmark.json, "
          "benchmark.png")
    if docs.value:
      args, skip = [], False
      for a in sys.argv[1:]:   # the command without --update_docs (and its value)
        if skip or a.startswith("--update_docs"):
          skip = not skip and a == "--update_docs"
          continue
        args.append(a)
      command = "python tools/mtl_benchmark.py " + " ".join(args)
      update_docs(pathlib.Path(docs.value), pathlib.Path(workdir.value), command)
  app.run(_main)


if __name__ == "__main__":
  main()
