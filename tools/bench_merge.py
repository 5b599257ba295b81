"""Benchmark: merging T task vectors of a transformer-shaped f32 model, against a bandwidth floor.

Cases, each printed as one JSON line (median of ``--reps`` timed runs after one warm-up):

* ``floor``: one jitted read of the same bytes (sum over every leaf of the T+1 pytrees) -- the
  memory-bandwidth floor any merge that reads all models must pay.
* ``task_arithmetic``: ``jaxmtl.merging.task_arithmetic`` jitted.
* ``task_arithmetic_treemap``: the same formula as one hand-written ``jax.tree.map``
  (``a + 0.3 * sum(x - a for x in b)``), for comparison.
* ``ties_global``: ``jaxmtl.merging.ties`` with the official global top-k trim (density 0.2).
* ``fusionbench_ties``: FusionBench's ``ties_merging`` (PyTorch, CPU) on the same shapes --
  only when ``--fusionbench-python`` names an interpreter that has ``torch`` and
  ``fusion-bench`` (never a jaxmtl dependency); it flattens the task vectors with
  ``state_dict_to_vector`` and merges with ``reset_thresh=20, merge_func="dis-mean"``.

Usage::

  python tools/bench_merge.py --params 5e6            # quick correctness-sized run
  python tools/bench_merge.py                          # 100M params x (8 tasks + base), ~3.6 GB
  python tools/bench_merge.py --fusionbench-python /tmp/ref_mio/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp


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
  """Pretrained + ``tasks`` finetuned flat dicts (``theta_t = theta_0 + 0.01 * noise``)."""
  @jax.jit
  def gen(key):
    keys = jax.random.split(key, len(shapes))
    return {k: jax.random.normal(kk, s, jnp.float32) for kk, (k, s) in zip(keys, shapes.items())}

  pre = gen(jax.random.key(seed))
  step = jax.jit(lambda p, n: jax.tree.map(lambda a, b: a + 0.01 * b, p, n))
  fts = [step(pre, gen(jax.random.key(seed + 1 + t))) for t in range(tasks)]
  jax.block_until_ready(fts)
  return pre, fts


def timeit(fn, *args, reps: int) -> tuple[float, float]:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), first


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


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--params", type=float, default=100e6, help="parameters per model")
  ap.add_argument("--tasks", type=int, default=8)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--density", type=float, default=0.2)
  ap.add_argument("--fusionbench-python", default="",
                  help="interpreter with torch + fusion-bench for the reference TIES case")
  ap.add_argument("--cases", default="", help="comma-separated subset of the jaxmtl cases")
  args = ap.parse_args()
  import jaxmtl.merging as M  # pylint: disable=g-import-not-at-top

  shapes = transformer_shapes(args.params)
  n = sum(int(jnp.prod(jnp.array(s))) for s in shapes.values())
  pre, fts = make_models(shapes, args.tasks)
  gbytes = 4 * n * (args.tasks + 1) / 1e9
  common = {"params": n, "tasks": args.tasks, "leaves": len(shapes), "read_GB": round(gbytes, 3),
            "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine()}

  floor_fn = jax.jit(lambda p, f: sum(jnp.sum(x) for t in [p, *f] for x in jax.tree.leaves(t)))
  floor, first = timeit(floor_fn, pre, fts, reps=args.reps)
  print(json.dumps({"case": "floor", "seconds": round(floor, 4), "first_s": round(first, 3),
                    "GB_per_s": round(gbytes / floor, 2), **common}), flush=True)
  cases = {
    "task_arithmetic": jax.jit(lambda p, f: M.task_arithmetic(p, f, scaling=0.3)),
    # the same formula written as one fused tree_map: what a single read of the inputs costs
    "task_arithmetic_treemap": jax.jit(lambda p, f: jax.tree.map(
      lambda a, *b: a + 0.3 * sum(x - a for x in b), p, *f)),
    "ties_global": jax.jit(lambda p, f: M.ties(p, f, density=args.density)),
  }
  for name, fn in cases.items():
    if args.cases and name not in args.cases.split(","):
      continue
    sec, first = timeit(fn, pre, fts, reps=args.reps)
    print(json.dumps({"case": name, "seconds": round(sec, 4), "first_s": round(first, 3),
                      "ratio_to_floor": round(sec / floor, 2), **common}), flush=True)
  del pre, fts
  if not args.fusionbench_python:
    print(json.dumps({"case": "fusionbench_ties", "skipped": "pass --fusionbench-python "
                      "(torch + fusion-bench are not jaxmtl dependencies)"}))
    return
  out = subprocess.run([args.fusionbench_python, "-c", _FB_SCRIPT, json.dumps(shapes),
                        str(args.tasks), str(args.reps)], capture_output=True, text=True)
  if out.returncode:
    print(json.dumps({"case": "fusionbench_ties", "skipped": f"exit code {out.returncode} "
                      f"(-9: killed, out of memory): {out.stderr.strip()[-300:]}"}))
    return
  r = json.loads(out.stdout.strip().splitlines()[-1])
  print(json.dumps({"case": "fusionbench_ties", "seconds": round(r["seconds"], 4),
                    "first_s": round(r["first_s"], 3), "ratio_to_floor": round(
                      r["seconds"] / floor, 2), "torch": r["torch"],
                    "torch_threads": r["threads"], **common}))


if __name__ == "__main__":
  sys.exit(main())
