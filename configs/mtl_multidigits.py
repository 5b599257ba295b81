"""Benchmark of the MTL methods on MultiDigits (left digit / right digit), 3 seeds.

An experiment config (every key of `jaxmtl.config.default_config()`) plus a `benchmark` block
that `tools/mtl_benchmark.py` removes before building each run's ExperimentConfig:

  python tools/mtl_benchmark.py --config configs/mtl_multidigits.py --workdir runs/mtl_md \
      --update-docs docs/mtl.md
  python tools/mtl_benchmark.py --config configs/mtl_multidigits.py:runlocal --workdir /tmp/md

benchmark.seeds: seeds of every run; benchmark.baselines: the single-task runs (one task each,
`data.tasks`, summed loss) that Δm% compares against; benchmark.methods: names that
`tools/mtl_benchmark.py` turns into `mtl.*` overrides — a loss weighting by its name
(`jaxmtl.mtl.weighting.WEIGHTINGS`, plus "sum"/"mean"), "gradnorm@features" (LibMTL
`rep_grad`), and every aggregator as "<name>@params" (per-task gradients of the shared
parameters, `mtl.jacobian="full"`), "<name>@gramian" (Gramian-only, same update, memory
O(params)), "<name>@ghost" (ghost Gramian from the dense layers, same update, fastest) and
"<name>@features" (representation level, MGDA-UB).

Size and length were chosen for a budget of about 20-25 minutes for the 120 runs on a quiet
2-core CPU: an MLP (width 256, depth 2: 137K parameters) trained for 500 steps of 64 examples
(4 epochs of the 8,000 training pairs) with AdamW and a warmup-cosine schedule, evaluated once
on the 2,000 test pairs. The input pipeline (about 0.2 ms of CPU per example) costs more than
the model's steps, so the number of examples read sets the time; each run also compiles its
step (the seeds of a method share it through the tool's XLA cache). The two tasks share a
small trunk and compete for it: multi-task models stay well below the single-task ones at this
budget, which leaves room for the methods to differ.
"""
import ml_collections

from jaxmtl.config import default_config
from jaxmtl.mtl.aggregators import AGGREGATORS

ARGS = ("", "runlocal")
WEIGHTINGS = ("sum", "mean", "uw", "dwa", "rlw", "gradnorm", "famo", "db_mtl")


def methods() -> tuple[str, ...]:
  names = list(WEIGHTINGS) + ["gradnorm@features"]
  for agg in sorted(AGGREGATORS):
    names.append(f"{agg}@params")
    if agg != "graddrop":  # element-wise, not Gramian-expressible
      names.append(f"{agg}@gramian")
      names.append(f"{agg}@ghost")
    names.append(f"{agg}@features")
  return tuple(names)


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r}; valid: {', '.join(map(repr, ARGS))}")
  steps = 500
  c = default_config()
  c.seed = 0
  c.model.update(name="mlp", width=256, depth=2, activation="relu")
  c.mup.name = "sp"
  c.optim.update(name="adamw", lr=2e-3, weight_decay=1e-4, schedule="warmup_cosine",
                 warmup_steps=50, total_steps=steps)
  c.data.update(name="jaxmtl_multidigits", batch_size=64, eval_batch_size=1000)
  c.mesh.update(shape=(-1, 1, 1), strategy="dp")
  c.train.update(steps=steps, log_every=50, eval_every=steps, checkpoint_every=steps // 2,
                 keep_checkpoints=1, progress=False, plot=False, async_checkpoints=False)
  bench = dict(seeds=(0, 1, 2), baselines=("left", "right"), methods=methods())
  if arg == "runlocal":
    steps = 30
    c.model.width = 32
    c.optim.update(warmup_steps=5, total_steps=steps)
    c.data.batch_size = 64
    c.train.update(steps=steps, log_every=10, eval_every=steps, checkpoint_every=steps)
    bench.update(seeds=(0,), methods=("sum", "upgrad@gramian"))
  c.benchmark = ml_collections.ConfigDict(bench)
  return c
