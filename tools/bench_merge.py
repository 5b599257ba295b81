"""Benchmark: merging T task vectors of a transformer-shaped f32 model, against a bandwidth floor.

Cases, each printed as one JSON line:

* ``floor``: one jitted read of the same bytes (sum over every leaf of the T+1 pytrees) -- the
  memory-bandwidth floor any merge that reads all models must pay. Two versions: one program
  over every leaf (``--floor program``, minutes to compile at hundreds of leaves) and one small
  program per leaf shape called leaf by leaf (``leafwise``, what the merges do); with
  ``--floor both`` (default) each round's floor is the faster of the two.
* ``task_arithmetic``, ``weight_average``, ``ties_global`` (official global trim, density 0.2),
  ``dare`` (drop 0.9, paper rescale; masks from ``jaxmtl.rng``'s hash), ``dare_jax_uniform``
  (the same with ``uniform="jax"``: threefry), ``consensus`` (TALL masks on task arithmetic):
  ``jaxmtl.merging`` called as a user would, outside ``jax.jit`` (each runs one fused program
  per leaf shape; global TIES also runs its exact threshold selection).
* ``task_arithmetic_treemap``: the task-arithmetic formula as one hand-written, jitted
  ``jax.tree.map`` (``a + 0.3 * sum(x - a for x in b)``), for comparison.
* ``read_one_loop``: the same bytes read by one loop per leaf that takes an entry of every model
  at once (``sum(a + f_1 + ... + f_T)``, one program per leaf shape): the access pattern of every
  merge and counting kernel, which needs all ``T + 1`` values of an entry together. Its ratio to
  the floor (separate single-array reads) is what reading ``T + 1`` streams in one loop costs on
  the machine, before any arithmetic; it is reported, not used as the floor.
* ``fusionbench_ties``: FusionBench's ``ties_merging`` (PyTorch, CPU) on the same shapes --
  only when ``--fusionbench-python`` names an interpreter that has ``torch`` and
  ``fusion-bench`` (never a jaxmtl dependency); it flattens the task vectors with
  ``state_dict_to_vector`` and merges with ``reset_thresh=20, merge_func="dis-mean"``. It runs
  under ``prlimit --as`` (``--fusionbench-mem-gb``) so that running out of memory fails that
  case instead of the machine.

Timing: one warm-up call per case (``first_s``: compilation plus one run), then ``--reps``
rounds; every round times the floor and then each case, so each case's ``ratio_to_floor`` is
the median over rounds of (case seconds / floor seconds of the same round), which stays
meaningful on a machine shared with other jobs. ``seconds`` is the median case time.
``--clock cpu`` times process CPU time instead of wall time (steadier when other jobs compete for
the cores; it counts both XLA threads, so single-threaded host work weighs half as much).

Usage::

  python tools/bench_merge.py --params 5e6            # quick correctness-sized run
  python tools/bench_merge.py                          # 100M params x (8 tasks + base), ~3.7 GB
  python tools/bench_merge.py --params 25e6 --fusionbench-python /tmp/ref_mio/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def transformer_shapes(params: float) -> dict[str, tuple[int, ...]]:
  """Leaf shapes of a pre-LN decoder with ~``params`` parameters (d=768 at 100M)."""
  d = 768 if params >= 5e7 else 256 if params >= 2e6 else 64
  vocab = max(16, int(params * 0.25 / d))
  per_layer = 12 * d * d + 13 * d
  layers = max(1, round((params - vocab * d) / per_layer))
  shapes = {"embed/embedding": (vocab, d)}
  for i in range(layers):
    b = f"blocks/{i}/"
    for n in ("query", "key", "value", "out"):
      shapes[b + f"attn/{n}/kernel"] = (d, d)
      shapes[b + f"attn/{n}/bias"] = (d,)
    shapes[b + "mlp/fc1/kernel"], shapes[b + "mlp/fc1/bias"] = (d, 4 * d), (4 * d,)
    shapes[b + "mlp/fc2/kernel"], shapes[b + "mlp/fc2/bias"] = (4 * d, d), (d,)
    for n in ("norm1", "norm2"):
      shapes[b + f"{n}/scale"], shapes[b + f"{n}/bias"] = (d,), (d,)
  shapes["final_norm/scale"] = (d,)
  return shapes


def make_models(shapes, tasks: int, seed: int = 0):
  """Pretrained + ``tasks`` finetuned flat dicts (``theta_t = theta_0 + 0.01 * noise``).

  Leaf by leaf (one small program per shape) rather than one program over every leaf, which
  took minutes to compile at a few hundred leaves.
  """
  normal = jax.jit(lambda k, base, *, shape: base + 0.01 * jax.random.normal(k, shape),
                   static_argnames="shape")
  first = jax.jit(lambda k, *, shape: jax.random.normal(k, shape), static_argnames="shape")
  pre = {n: first(jax.random.key(seed * 7919 + i), shape=s)
         for i, (n, s) in enumerate(shapes.items())}
  fts = [{n: normal(jax.random.fold_in(jax.random.key(seed + 1 + t), i), pre[n], shape=s)
          for i, (n, s) in enumerate(shapes.items())} for t in range(tasks)]
  jax.block_until_ready(fts)
  return pre, fts


_CLOCK = time.perf_counter


def _run(fn):
  t0 = _CLOCK()
  jax.block_until_ready(fn())
  return _CLOCK() - t0


_FB_SCRIPT = r"""
import json, sys, time, statistics, torch
from fusion_bench.method.ties_merging.ties_merging_utils import state_dict_to_vector, ties_merging
shapes, tasks, reps = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
tvs = [{k: 0.01 * torch.randn(*s) for k, s in shapes.items()} for _ in range(tasks)]
def run():
  flat = torch.vstack([state_dict_to_vector(tv) for tv in tvs])
  return ties_merging(flat, reset_thresh=20, merge_func="dis-mean")
times = []
for i in range(reps + 1):
  t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
print(json.dumps({"seconds": statistics.median(times[1:]), "first_s": times[0],
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
"""


def _fusionbench(args, shapes, floor, common) -> None:
  if not args.fusionbench_python:
    print(json.dumps({"case": "fusionbench_ties", "skipped": "pass --fusionbench-python "
                      "(torch + fusion-bench are not jaxmtl dependencies)"}), flush=True)
    return
  cmd = [args.fusionbench_python, "-c", _FB_SCRIPT, json.dumps(shapes), str(args.tasks),
         str(args.reps)]
  if shutil.which("prlimit"):
    cmd = ["prlimit", f"--as={int(args.fusionbench_mem_gb * 2**30)}", "--"] + cmd
  out = subprocess.run(cmd, capture_output=True, text=True)
  if out.returncode:
    print(json.dumps({"case": "fusionbench_ties", "skipped": f"exit code {out.returncode} "
                      f"(-9 or MemoryError: out of memory under the {args.fusionbench_mem_gb} GB "
                      f"cap): {out.stderr.strip()[-300:]}"}), flush=True)
    return
  r = json.loads(out.stdout.strip().splitlines()[-1])
  print(json.dumps({"case": "fusionbench_ties", "seconds": round(r["seconds"], 4),
                    "first_s": round(r["first_s"], 3), "ratio_to_floor": round(
                      r["seconds"] / floor, 2), "torch": r["torch"],
                    "torch_threads": r["threads"], **common}), flush=True)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--params", type=float, default=100e6, help="parameters per model")
  ap.add_argument("--tasks", type=int, default=8)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--density", type=float, default=0.2)
  ap.add_argument("--fusionbench-python", default="",
                  help="interpreter with torch + fusion-bench for the reference TIES case")
  ap.add_argument("--fusionbench-mem-gb", type=float, default=12.0,
                  help="address-space cap (prlimit --as) for the FusionBench process")
  ap.add_argument("--cases", default="", help="comma-separated subset of the jaxmtl cases")
  ap.add_argument("--floor", default="both", choices=("both", "program", "leafwise"))
  ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                  help="cpu: process CPU time (all threads), steadier on a shared machine")
  args = ap.parse_args()
  global _CLOCK
  _CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
  import jaxmtl.merging as M  # pylint: disable=g-import-not-at-top
  from jaxmtl.merging.methods import diagnostics  # pylint: disable=g-import-not-at-top

  shapes = transformer_shapes(args.params)
  n = sum(int(np.prod(s)) for s in shapes.values())
  pre, fts = make_models(shapes, args.tasks)
  gbytes = 4 * n * (args.tasks + 1) / 1e9
  common = {"params": n, "tasks": args.tasks, "leaves": len(shapes), "read_GB": round(gbytes, 3),
            "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
            "clock": args.clock}

  floor_jit = jax.jit(lambda p, f: sum(jnp.sum(x) for t in [p, *f] for x in jax.tree.leaves(t)))
  leaf_sum = jax.jit(lambda a, fs: jnp.sum(a) + sum(jnp.sum(f) for f in fs))
  leaf_sum_one_loop = jax.jit(lambda a, fs: jnp.sum(a + sum(fs)))
  floors_fns = {"program": lambda: floor_jit(pre, fts),
                "leafwise": lambda: [leaf_sum(pre[k], [f[k] for f in fts]) for k in pre]}
  floors_fns = {k: v for k, v in floors_fns.items() if args.floor in (k, "both")}
  treemap = jax.jit(lambda p, f: jax.tree.map(lambda a, *b: a + 0.3 * sum(x - a for x in b),
                                              p, *f))
  key = jax.random.key(0)
  cases = {
    "task_arithmetic": lambda: M.task_arithmetic(pre, fts, scaling=0.3),
    "task_arithmetic_treemap": lambda: treemap(pre, fts),
    "read_one_loop": lambda: [leaf_sum_one_loop(pre[k], [f[k] for f in fts]) for k in pre],
    "weight_average": lambda: M.weight_average(pre, fts),
    "ties_global": lambda: M.ties(pre, fts, density=args.density),
    "dare": lambda: M.dare(pre, fts, key=key, drop_rate=0.9, scaling=0.3),
    "dare_jax_uniform": lambda: M.dare(pre, fts, key=key, drop_rate=0.9, scaling=0.3,
                                       uniform="jax"),
    "consensus": lambda: M.consensus(pre, fts, k=2),
  }
  if args.cases:
    cases = {k: v for k, v in cases.items() if k in args.cases.split(",")}
  floor_first = {k: _run(fn) for k, fn in floors_fns.items()}
  first = {}
  for name, fn in cases.items():
    with diagnostics.collect() as stats:
      first[name] = _run(fn)
    if name == "ties_global":
      first["ties_stats"] = stats
  floors, times = [], {name: [] for name in cases}
  for _ in range(args.reps):
    floors.append(min(_run(fn) for fn in floors_fns.values()))
    for name, fn in cases.items():
      times[name].append(_run(fn))
  floor = statistics.median(floors)
  print(json.dumps({"case": "floor", "seconds": round(floor, 4), "first_s": {
                      k: round(v, 3) for k, v in floor_first.items()},
                    "GB_per_s": round(gbytes / floor, 2), "floor_min_max": [
                      round(min(floors), 4), round(max(floors), 4)], **common}), flush=True)
  for name in cases:
    ratios = [t / f for t, f in zip(times[name], floors)]
    row = {"case": name, "seconds": round(statistics.median(times[name]), 4),
           "first_s": round(first[name], 3), "ratio_to_floor": round(statistics.median(ratios), 2),
           "ratio_min_max": [round(min(ratios), 2), round(max(ratios), 2)], **common}
    if name == "ties_global":
      row["selection"] = first["ties_stats"]
    print(json.dumps(row), flush=True)
  del pre, fts
  _fusionbench(args, shapes, floor, common)


if __name__ == "__main__":
  sys.exit(main())
