"""Benchmark: AdaMerging steps/s, jaxmtl's jitted step against re-merging outside jit.

The model is the merging benchmark's (`configs/merge_benchmark.py`: a 3-layer ReLU MLP of
width 256 on 16x16x1 inputs, one 10-class head per task, K = 8 tasks) with random pretrained
weights and task vectors (speed does not depend on their values); `--model vit` uses a small
ViT instead. Each step draws 16 unlabeled inputs per task, computes the merged parameters
theta_0 + sum_t lambda[t, l] tau_t[l], the entropy loss of every task with its own head, the
gradient w.r.t. lambda and an Adam update. Cases, each printed as one JSON line (median of
`--reps` timed blocks of `--steps` steps, after a warm-up block):

* `jaxmtl_layerwise` / `jaxmtl_taskwise`: `jaxmtl.merging.adamerging`'s step -- one jitted
  pure function of (coefficients, Adam state) with the pretrained leaves and the stacked task
  vectors as inputs, mini-batches sampled inside it.
* `remerge_outside_jit`: the official code's structure (EnnengYang/AdaMerging
  `main_layer_wise_adamerging.py`): every step re-merges the parameters leaf by leaf in Python
  (eager jax ops), runs the (jitted) forward pass of each task on the merged parameters,
  differentiates through the eager merge and applies Adam outside jit.
* `fusionbench_layerwise`: FusionBench's `LayerWiseMergedModel` (`clamp_weights=False`, as in
  `config/method/adamerging/clip.yaml`) with the same MLP in PyTorch, running the inner loop
  of `LayerWiseAdaMergingAlgorithm.test_time_adaptation` (per-task forward + entropy +
  `backward(retain_graph=True)`, Adam step, `merge_weights()`); only with
  `--fusionbench-python` naming an interpreter that has `torch` and `fusion-bench` (never a
  jaxmtl dependency). Its address space is capped with `--fusionbench-memory-gb` (ulimit -v).

Usage::

  python tools/bench_adamerging.py
  python tools/bench_adamerging.py --fusionbench-python /tmp/fbvenv/bin/python
  python tools/bench_adamerging.py --model vit --steps 20
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

IMAGE = (16, 16, 1)


def build(model: str, width: int, depth: int, tasks: int, per_task: int, seed: int = 0):
  """(suite-like plumbing, pretrained backbone, heads, stacked task vectors, inputs)."""
  from jaxmtl.merging import benchmark
  from jaxmtl.models import ModelConfig, make_model
  from jaxmtl.mup import Parametrization
  from jaxmtl.train.combine import HEADS, split_heads
  cfg = ModelConfig(name=model, width=width, depth=depth, activation="relu", patch_size=4,
                    num_heads=4)
  names = [f"task{t}" for t in range(tasks)]
  m = make_model(cfg, IMAGE, {n: 10 for n in names}, Parametrization(), nnx.Rngs(seed))
  params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
  backbone, heads = split_heads(params)
  graphdef = nnx.split(m, nnx.Param)[0]
  suite = benchmark.Suite(names, [], graphdef, 1.0 / 255.0, {}, {},
                          {HEADS: jax.tree.map(jnp.zeros_like, heads[HEADS])})
  r = np.random.default_rng(seed)
  stacked = jax.tree.map(lambda a: jnp.asarray(
      0.01 * r.normal(size=(tasks,) + a.shape), jnp.float32), backbone)
  inputs = tuple(jnp.asarray(r.integers(0, 256, (per_task,) + IMAGE, dtype=np.uint8))
                 for _ in range(tasks))
  return suite, names, backbone, heads[HEADS], stacked, inputs


def time_blocks(run_block, reps: int) -> tuple[float, float]:
  """(median seconds per block, seconds of the first block incl. compilation)."""
  t0 = time.perf_counter()
  run_block()
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    run_block()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), first


def jaxmtl_case(suite, names, backbone, heads, stacked, inputs, granularity, args):
  import importlib
  A = importlib.import_module("jaxmtl.merging.adamerging")
  from jaxmtl.merging import benchmark
  group_of_leaf, groups = A.coefficient_groups(backbone, granularity=granularity)
  pre, treedef = jax.tree_util.tree_flatten(backbone)
  _, stacks = A._stacked_leaves(backbone, stacked, group_of_leaf)
  loss = A.make_loss(benchmark.make_logits_fn(suite, names), treedef, group_of_leaf)
  opt = optax.adam(1e-3)
  step = jax.jit(A.make_step(loss, opt, args.batch), donate_argnums=0)
  raw = jnp.full((len(names), len(groups)), 0.3, jnp.float32)
  consts = A.Constants(pre, stacks, heads, inputs, (), jax.random.key(0))
  box = {"state": A.AdaMergingState(jnp.zeros((), jnp.int32), raw, opt.init(raw))}

  def block():
    state = box["state"]
    for _ in range(args.steps):
      state, metrics = step(state, consts)
    jax.block_until_ready(metrics["loss"])
    box["state"] = state

  return time_blocks(block, args.reps), len(groups)


def remerge_case(suite, names, backbone, heads, stacked, inputs, args):
  """Re-merge leaf by leaf in eager jax every step; jitted forward; eager grad and Adam."""
  import importlib
  A = importlib.import_module("jaxmtl.merging.adamerging")
  from jaxmtl.merging import benchmark
  logits_fn = jax.jit(benchmark.make_logits_fn(suite, names))
  pre, treedef = jax.tree_util.tree_flatten(backbone)
  tvs = jax.tree_util.tree_leaves(stacked)
  t = len(names)
  sample = jax.jit(lambda key: tuple(  # the same sampler as jaxmtl's step, jitted
      x[jax.lax.top_k(jax.random.uniform(jax.random.fold_in(key, i), (x.shape[0],)),
                      args.batch)[1]] for i, x in enumerate(inputs)))

  def loss(raw, xs):
    lam = jnp.clip(raw, 0.0, 1.0)
    merged = [p + sum(lam[k, j] * tv[k] for k in range(t)) for j, (p, tv) in
              enumerate(zip(pre, tvs))]  # the official tuple(sum(pi * lambdasi ...)) per leaf
    logits = logits_fn(jax.tree_util.tree_unflatten(treedef, merged), heads, xs)
    return sum(jnp.mean(A.softmax_entropy(lg)) for lg in logits)

  opt = optax.adam(1e-3)
  box = {"raw": jnp.full((t, len(pre)), 0.3, jnp.float32), "step": 0}
  box["opt"] = opt.init(box["raw"])

  def block():
    for _ in range(args.steps):
      xs = sample(jax.random.fold_in(jax.random.key(0), box["step"]))
      value, grad = jax.value_and_grad(loss)(box["raw"], xs)
      updates, box["opt"] = opt.update(grad, box["opt"], box["raw"])
      box["raw"] = optax.apply_updates(box["raw"], updates)
      box["step"] += 1
    jax.block_until_ready(value)

  return time_blocks(block, args.reps), len(pre)


FUSIONBENCH_SCRIPT = r'''
import json, statistics, sys, time, copy
import torch
from torch import nn
from fusion_bench.models.wrappers.layer_wise_fusion import (LayerWiseMergedModel,
                                                           get_layer_wise_weights)
from fusion_bench.method.adamerging.entropy_loss import entropy_loss
a = json.loads(sys.argv[1])
torch.manual_seed(0)
layers, d = [], 16 * 16
for i in range(a["depth"]):
    layers += [nn.Linear(d, a["width"]), nn.ReLU()]
    d = a["width"]
pre = nn.Sequential(*layers)
fts = []
for t in range(a["tasks"]):
    m = copy.deepcopy(pre)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fts.append(m)
heads = [nn.Linear(a["width"], 10).requires_grad_(False) for _ in range(a["tasks"])]
n_layers = len(tuple(p for p in pre.parameters() if p.requires_grad))
w = get_layer_wise_weights(num_models=a["tasks"], num_layers=n_layers, init_values=0.3)
module = LayerWiseMergedModel(layer_wise_weight=w, pretrained_model=pre, finetuned_models=fts,
                              clamp_weights=False, tie_weights=True, strict=False)
opt = torch.optim.Adam([module.merge_weight], lr=1e-3)
data = [torch.randint(0, 256, (a["per_task"], 16 * 16)).float() / 255 for _ in range(a["tasks"])]
module.train()
module.merge_weights()
def block():
    for _ in range(a["steps"]):
        for t in range(a["tasks"]):
            idx = torch.randperm(a["per_task"])[:a["batch"]]
            loss = entropy_loss(heads[t](module(data[t][idx])))
            loss.backward(retain_graph=True)
        opt.step()
        opt.zero_grad()
        module.merge_weights()
t0 = time.perf_counter(); block(); first = time.perf_counter() - t0
times = []
for _ in range(a["reps"]):
    t0 = time.perf_counter(); block(); times.append(time.perf_counter() - t0)
from importlib.metadata import version
print(json.dumps({"median_s": statistics.median(times), "first_s": first,
                  "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "fusion_bench": version("fusion-bench")}))
'''


def fusionbench_case(python: str, args) -> dict:
  limit_kb = int(args.fusionbench_memory_gb * 2**20)
  payload = json.dumps({"width": args.width, "depth": args.depth, "tasks": args.tasks,
                        "per_task": args.per_task, "batch": args.batch, "steps": args.steps,
                        "reps": args.reps})
  # The memory cap is set by the shell (`ulimit -v`, i.e. RLIMIT_AS), not by a preexec_fn,
  # so this multi-threaded process never forks with Python code to run in the child.
  cmd = ["bash", "-c", f'ulimit -v {limit_kb} && exec "$0" -c "$1" "$2"', python,
         FUSIONBENCH_SCRIPT, payload]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
  if out.returncode != 0:
    raise RuntimeError(f"FusionBench case failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="mlp", choices=("mlp", "vit"))
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--depth", type=int, default=3)
  ap.add_argument("--tasks", type=int, default=8)
  ap.add_argument("--per-task", type=int, default=2000, help="unlabeled inputs per task")
  ap.add_argument("--batch", type=int, default=16, help="inputs per task per step")
  ap.add_argument("--steps", type=int, default=50, help="steps per timed block")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--cases", default="jaxmtl_layerwise,jaxmtl_taskwise,remerge_outside_jit,"
                  "fusionbench_layerwise")
  ap.add_argument("--fusionbench-python", default=None)
  ap.add_argument("--fusionbench-memory-gb", type=float, default=6.0)
  args = ap.parse_args()
  cases = args.cases.split(",")
  problem = build(args.model, args.width, args.depth, args.tasks, args.per_task)
  backbone = problem[2]
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(backbone))
  common = {"model": args.model, "width": args.width, "depth": args.depth,
            "backbone_params": n_params, "tasks": args.tasks, "batch_per_task": args.batch,
            "steps_per_block": args.steps, "device": jax.devices()[0].device_kind,
            "host": platform.node()}
  baseline = None
  rows = []
  for case in cases:
    if case == "fusionbench_layerwise":
      if args.model != "mlp":
        continue
      if not args.fusionbench_python:
        print(json.dumps({"case": case, "skipped": "pass --fusionbench-python"}), flush=True)
        continue
      fb = fusionbench_case(args.fusionbench_python, args)
      med, first, extra = fb["median_s"], fb["first_s"], {k: fb[k] for k in fb
                                                          if k not in ("median_s", "first_s")}
      groups = None
    elif case in ("jaxmtl_layerwise", "jaxmtl_taskwise"):
      (med, first), groups = jaxmtl_case(*problem, case.split("_")[1][:-4], args)
      extra = {}
    elif case == "remerge_outside_jit":
      (med, first), groups = remerge_case(*problem, args)
      extra = {}
    else:
      raise SystemExit(f"unknown case {case!r}")
    row = {"case": case, **common, "coefficient_groups": groups,
           "steps_per_s": args.steps / med, "ms_per_step": 1e3 * med / args.steps,
           "first_block_s": first, **extra}
    if case == "remerge_outside_jit":
      baseline = row["steps_per_s"]
    rows.append(row)
  for row in rows:  # ratios against the baselines measured in this same run
    if baseline:
      row["speedup_vs_remerge_outside_jit"] = row["steps_per_s"] / baseline
    fb = next((r for r in rows if r["case"] == "fusionbench_layerwise"), None)
    if fb:
      row["speedup_vs_fusionbench"] = row["steps_per_s"] / fb["steps_per_s"]
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  sys.exit(main())
