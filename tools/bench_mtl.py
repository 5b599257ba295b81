"""Step time and memory of every MTL method relative to equal weighting, for T=3 and T=10 tasks.

Each case is the library's own jitted train step (`train.step.make_train_step` over
`train.combine.make_mtl`, AdamW, state donated) on an MLP trunk (`models.MLP`) with T
classification heads and a synthetic in-memory batch, so only the loss combination differs
between cases. Step times are paired and interleaved: in every round each case runs right after
a run of the equal-weighting (`sum`) step, and `rel_time` is the median over rounds of the
ratio of the two, so both sides of a ratio see the same machine state. Memory is XLA's own deterministic estimate from
`jit(...).lower(...).compile().memory_analysis()`: peak = arguments + outputs − aliased
(donated) + temporaries, per device.

Prints one JSON line per case:
  {"tasks", "case", "family", "ms", "rel_time", "goal", "ok", "peak_mib", "rel_peak",
   "temp_mib", "rel_temp", "compile_s", ...}

  python tools/bench_mtl.py                         # everything, T=3 and T=10 (~10 min on 2 cores)
  python tools/bench_mtl.py --tasks 3 --cases sum,upgrad,upgrad@gramian --rounds 3
  python tools/bench_mtl.py --json-out runs/bench_mtl.jsonl

Families and the goals of issue 3 (CPU): `loss` (loss weightings: one backward) and
`features` (representation level, MGDA-UB) ≤ 1.3×; `jacobian` (per-task gradients of the
shared parameters: every aggregator with `mtl.jacobian="full"`, DB-MTL, GradNorm on the
shared parameters) ≤ 2.5× at T=3 and ≤ 6× at T=10; `gramian` (`mtl.jacobian="gramian"`,
memory O(params)): peak memory ≤ 1.5× equal weighting (its time is reported, no goal);
`ghost` (`mtl.jacobian="ghost"`: the Gramian from the dense layers' inputs and output
cotangents, `jaxmtl.mtl.ghost`; same update as `jacobian`): the `jacobian` goals;
`vmap`: the full Jacobian with the T backward passes batched by `vmap` (the accelerator
default of `mtl.jacobian="full"`; on CPU "full" runs them one at a time), for comparison.
`graddrop@full:jax_uniform`: GradDrop with `jax.random.uniform` (threefry) instead of the
default counter hash of `jaxmtl.rng`, for comparison.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmtl import tasks as tasks_lib
from jaxmtl.models import ModelConfig, abstract_model, make_model
from jaxmtl.mtl import aggregators as agg_lib
from jaxmtl.mup import Parametrization
from jaxmtl.optim import OptimizerConfig, make_optimizer
from jaxmtl.train import state as state_lib
from jaxmtl.train.combine import MTLConfig, make_mtl
from jaxmtl.train.step import make_features_fns, make_loss_fn, make_train_step

GOALS = {"loss": (1.3, 1.3), "features": (1.3, 1.3), "jacobian": (2.5, 6.0), "ghost": (2.5, 6.0)}  # T=3, T=10
MIB = 2.0 ** 20


def cases(num_tasks: int) -> dict[str, tuple[str, dict]]:
  """name -> (family, MTLConfig kwargs). Aggregators are `<name>@<mode>`."""
  out = {}
  for w in ("sum", "mean", "uw", "dwa", "rlw", "famo"):
    opts = {"window": "step"} if w == "dwa" else {}
    out[w] = ("loss", {"weighting": w, "options": opts})
  out["famo@next_batch"] = ("loss", {"weighting": "famo",
                                     "options": {"logit_update": "next_batch"}})
  out["gradnorm@features"] = ("features", {"weighting": "gradnorm", "mode": "features"})
  out["gradnorm@full"] = ("jacobian", {"weighting": "gradnorm"})
  out["db_mtl@full"] = ("jacobian", {"weighting": "db_mtl"})
  for a in sorted(agg_lib.AGGREGATORS):
    out[f"{a}@full"] = ("jacobian", {"aggregator": a})
  # GradDrop's uniforms from jax.random (threefry) instead of the default counter hash.
  out["graddrop@full:jax_uniform"] = ("jacobian", {"aggregator": "graddrop",
                                                   "options": {"uniform": "jax"}})
  for a in sorted(agg_lib.AGGREGATORS):
    out[f"{a}@features"] = ("features", {"aggregator": a, "mode": "features"})
  for a in sorted(set(agg_lib.AGGREGATORS) - {"graddrop"}):
    out[f"{a}@gramian"] = ("gramian", {"aggregator": a, "jacobian": "gramian"})
  # Ghost Gramian (mtl.jacobian="ghost"): from the dense layers' inputs and output cotangents.
  out["gradnorm@ghost"] = ("ghost", {"weighting": "gradnorm", "jacobian": "ghost"})
  for a in sorted(set(agg_lib.AGGREGATORS) - {"graddrop"}):
    out[f"{a}@ghost"] = ("ghost", {"aggregator": a, "jacobian": "ghost"})
  # The T backward passes batched by vmap (what mtl.jacobian="full" does on accelerators).
  out["upgrad@vmap"] = ("vmap", {"aggregator": "upgrad", "jacobian": "chunked",
                                 "chunk_size": num_tasks})
  return out


def _spec(num_tasks: int, d_in: int) -> tasks_lib.DataSpec:
  tasks = tuple(tasks_lib.Task(f"t{i}", f"y{i}", 10) for i in range(num_tasks))
  return tasks_lib.DataSpec("synthetic", "x", (d_in,), None, tasks)


def _batch(spec: tasks_lib.DataSpec, batch_size: int) -> dict[str, jax.Array]:
  key = jax.random.key(0)
  kx, *ky = jax.random.split(key, 1 + len(spec.tasks))
  batch = {"x": jax.random.normal(kx, (batch_size,) + spec.input_shape, jnp.float32)}
  for k, t in zip(ky, spec.tasks):
    batch[t.label_key] = jax.random.randint(k, (batch_size,), 0, t.num_outputs)
  return batch


class Case:
  """One compiled train step with its own (donated) state."""

  def __init__(self, name, family, mtl_kwargs, spec, model_cfg, batch):
    outputs = {t.name: t.num_outputs for t in spec.tasks}
    param = Parametrization()
    graphdef, _, _, rules = abstract_model(model_cfg, spec.input_shape, outputs, param)
    optimizer = make_optimizer(OptimizerConfig(name="adamw", lr=1e-3), rules)
    mtl = make_mtl(MTLConfig(**mtl_kwargs), len(spec.tasks), make_loss_fn(graphdef, spec),
                   make_features_fns(graphdef, spec), steps_per_epoch=100)
    model_fn = lambda rngs: make_model(model_cfg, spec.input_shape, outputs, param, rngs)
    self.state = jax.jit(lambda: state_lib.make_init(model_fn, optimizer, mtl.init, 0)(None))()
    step = jax.jit(make_train_step(graphdef, spec, optimizer, mtl), donate_argnums=0)
    t0 = time.perf_counter()
    self.compiled = step.lower(self.state, batch).compile()
    self.compile_s = time.perf_counter() - t0
    mem = self.compiled.memory_analysis()
    self.temp = mem.temp_size_in_bytes
    self.peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                 - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    self.name, self.family, self.batch, self.times, self.ratios = name, family, batch, [], []
    self.run(2)  # warm up

  def run(self, n: int) -> float:
    """Seconds per step over n steps (blocking once at the end)."""
    t0 = time.perf_counter()
    for _ in range(n):
      self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - t0) / n


def bench(num_tasks: int, names: list[str], args) -> list[dict]:
  spec = _spec(num_tasks, args.d_in)
  model_cfg = ModelConfig(name="mlp", width=args.width, depth=args.depth, activation="relu")
  batch = _batch(spec, args.batch)
  table = cases(num_tasks)
  built = [Case(n, *table[n], spec, model_cfg, batch) for n in names]
  base = built[0]  # "sum"
  for _ in range(args.rounds):
    for c in built:
      # Paired: the baseline runs right before each case, so both see the same machine state.
      t_base = base.run(args.steps)
      t = t_base if c is base else c.run(args.steps)
      c.times.append(t)
      c.ratios.append(t / t_base)
  n_params = sum(x.size for x in jax.tree.leaves(base.state.params))
  rows = []
  for c in built:
    ms = statistics.median(c.times) * 1e3
    goal = GOALS.get(c.family, (None, None))[0 if num_tasks <= 3 else 1]
    row = {"tasks": num_tasks, "case": c.name, "family": c.family, "ms": round(ms, 2),
           "rel_time": round(statistics.median(c.ratios), 3), "goal": goal,
           "peak_mib": round(c.peak / MIB, 2), "rel_peak": round(c.peak / base.peak, 3),
           "temp_mib": round(c.temp / MIB, 2), "rel_temp": round(c.temp / max(base.temp, 1), 3),
           "compile_s": round(c.compile_s, 2), "params": int(n_params), "batch": args.batch,
           "width": args.width, "depth": args.depth, "device": jax.devices()[0].device_kind}
    if c.family == "gramian":
      row["goal"], row["ok"] = 1.5, row["rel_peak"] <= 1.5
    else:
      row["ok"] = None if goal is None else row["rel_time"] <= goal
    rows.append(row)
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tasks", type=int, nargs="+", default=[3, 10])
  ap.add_argument("--cases", default="", help="comma-separated case names (default: all); "
                  "'sum' (the baseline) is always added")
  ap.add_argument("--width", type=int, default=1024)
  ap.add_argument("--depth", type=int, default=4)
  ap.add_argument("--d-in", type=int, default=256)
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--steps", type=int, default=5, help="steps per timing (one round)")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--json-out", default="", help="also append the JSON lines to this file")
  args = ap.parse_args(argv)
  table = cases(3)
  names = [n for n in args.cases.split(",") if n] or list(table)
  unknown = sorted(set(names) - set(table))
  if unknown:
    raise SystemExit(f"unknown case(s) {unknown}; valid: {sorted(table)}")
  names = ["sum"] + [n for n in names if n != "sum"]
  out = open(args.json_out, "a") if args.json_out else None
  for t in args.tasks:
    for row in bench(t, names, args):
      line = json.dumps(row)
      print(line, flush=True)
      if out:
        out.write(line + "\n")
  if out:
    out.close()


if __name__ == "__main__":
  main(sys.argv[1:])
