"""Benchmark: the per-leaf merge kernels of `jaxmtl.merging.methods._fused` on one leaf.

Where global TIES' time goes, kernel by kernel, without the selection's host work or the
dispatch over many leaves: one leaf of ``--shape`` (default 768 x 3072, an MLP matrix of a
100M transformer) for the pretrained model and ``--tasks`` fine-tuned models (f32), thresholds at
the ``1 - density`` quantile of each task's ``|tau|``.

Cases (one JSON line each, ``ms`` the minimum over ``--reps`` interleaved rounds and
``ratio_to_floor`` against the floor of the same run):

* ``floor``: one jitted read of the T+1 arrays (their sums);
* ``task_arithmetic``: ``linear_leaf`` (theta_0 + 0.3 sum tau);
* ``ties_merge``: ``ties_leaf``, disjoint mean, unmarked (thresholds and majority given);
* ``ties_merge_sum``: the same with ``merge="sum"``;
* ``ties_merge_marked``: the eager form (NaN marks where the majority sign is needed, plus the
  vote read off the output) that global TIES runs;
* ``count``: ``code_leaf``, the exact counting pass against 4 edges per task with presence bits
  (global TIES' full selection pass); ``count_no_presence`` without them.

Usage::

  OPENBLAS_NUM_THREADS=1 python tools/bench_merge_kernels.py
  python tools/bench_merge_kernels.py --shape 1024 1024 --tasks 4 --reps 30
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmtl.merging.methods import _fused


def _keys(taus, quantiles):
  """uint32 keys (bitcast of |tau|) at the given quantiles of each task's magnitudes."""
  return np.stack([np.quantile(np.abs(t), quantiles).astype(np.float32).view(np.uint32)
                   for t in taus])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shape", type=int, nargs="+", default=[768, 3072])
  p.add_argument("--tasks", type=int, default=8)
  p.add_argument("--density", type=float, default=0.2)
  p.add_argument("--reps", type=int, default=15)
  args = p.parse_args(argv)
  shape, t_n, q = tuple(args.shape), args.tasks, 1.0 - args.density
  rng = np.random.default_rng(0)
  base = rng.normal(size=shape).astype(np.float32)
  fts = [base + 0.01 * rng.normal(size=shape).astype(np.float32) for _ in range(t_n)]
  taus = [f - base for f in fts]
  a, others = jnp.asarray(base), [jnp.asarray(f) for f in fts]
  thr = jnp.asarray(_keys(taus, [q])[:, 0], jnp.uint32)
  edges = jnp.asarray(np.sort(_keys(taus, [q - 0.01, q - 0.005, q, q + 0.005]), axis=1),
                      jnp.uint32)
  plus, zeros = jnp.int32(1), jnp.zeros((t_n, 4), jnp.int32)
  floor = jax.jit(lambda a, o: jnp.sum(a) + sum(jnp.sum(x) for x in o))
  ties = lambda **kw: _fused.ties_leaf(a, others, thr, plus, 1.0, is_tv=False, keep_all=False,
                                       sign="mass", **kw)
  cases = {
    "floor": lambda: floor(a, others),
    "task_arithmetic": lambda: _fused.linear_leaf(a, others, jnp.ones((t_n,)), 0.3,
                                                  is_tv=False),
    "ties_merge": lambda: ties(merge="disjoint_mean", mark=False),
    "ties_merge_sum": lambda: ties(merge="sum", mark=False),
    "ties_merge_marked": lambda: ties(merge="disjoint_mean", mark=True, sign_from_out=True),
    "count": lambda: _fused.code_leaf(zeros, a, others, edges, is_tv=False, stride=1,
                                      presence=True),
    "count_no_presence": lambda: _fused.code_leaf(zeros, a, others, edges, is_tv=False,
                                                  stride=1, presence=False),
  }
  for fn in cases.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in cases}
  for _ in range(args.reps):   # interleaved rounds: every case sees the same machine state
    for name, fn in cases.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  best = {name: min(v) for name, v in times.items()}
  read_gb = (t_n + 1) * int(np.prod(shape)) * 4 / 1e9
  common = {"shape": list(shape), "tasks": t_n, "read_GB": round(read_gb, 4), "reps": args.reps,
            "device": jax.default_backend(), "machine": platform.machine(),
            "jax": jax.__version__}
  for name, s in best.items():
    line = {"case": name, "ms": round(s * 1e3, 3),
            "ratio_to_floor": round(s / best["floor"], 3), **common}
    if name == "floor":
      line["GB_per_s"] = round(read_gb / s, 2)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
