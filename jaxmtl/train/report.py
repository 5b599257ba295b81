"""End-of-run outputs: a per-task results table (markdown + JSON) and training-curve plots."""
from __future__ import annotations

import json
import pathlib
from typing import Mapping, Sequence

from jaxmtl.metric_writers import read_jsonl


def results_table(task_names: Sequence[str], final_eval: Mapping[str, float],
                  final_train: Mapping[str, float]) -> str:
  """Markdown table: one row per task with test accuracy, test loss, last train loss."""
  has_bpb = any(f"{t}/bpb" in final_eval for t in task_names)
  head = "| task | test accuracy | test loss |" + (" test bits/byte |" if has_bpb else "") + " train loss |"
  sep = "|---|---:|---:|" + ("---:|" if has_bpb else "") + "---:|"
  rows = [head, sep]
  for t in task_names:
    bpb = f" {final_eval.get(f'{t}/bpb', float('nan')):.4f} |" if has_bpb else ""
    rows.append(f"| {t} | {final_eval.get(f'{t}/accuracy', float('nan')):.4f} | "
                f"{final_eval.get(f'{t}/loss', float('nan')):.4f} |{bpb} "
                f"{final_train.get(f'loss/{t}', float('nan')):.4f} |")
  return "\n".join(rows)


def write_results(workdir: pathlib.Path, task_names: Sequence[str], final_eval: Mapping[str, float],
                  final_train: Mapping[str, float], extra: Mapping | None = None) -> str:
  table = results_table(task_names, final_eval, final_train)
  (workdir / "results.md").write_text(table + "\n")
  payload = {"eval": dict(final_eval), "train": dict(final_train), **(extra or {})}
  (workdir / "results.json").write_text(json.dumps(payload, indent=2, sort_keys=True))
  return table


def plot_curves(workdir: pathlib.Path, task_names: Sequence[str]) -> pathlib.Path:
  """Writes curves.png: train loss per task, and eval accuracy per task, vs step."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = read_jsonl(workdir / "metrics.jsonl")
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for t in task_names:
    tr = [(r["step"], r[f"train/loss/{t}"]) for r in rows if f"train/loss/{t}" in r]
    ev = [(r["step"], r[f"eval/{t}/accuracy"]) for r in rows if f"eval/{t}/accuracy" in r]
    if tr:
      ax1.plot(*zip(*tr), label=t)
    if ev:
      ax2.plot(*zip(*ev), marker="o", label=t)
  ax1.set(xlabel="step", ylabel="train loss", yscale="log", title="training loss per task")
  ax2.set(xlabel="step", ylabel="test accuracy", title="evaluation per task")
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  path = workdir / "curves.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
