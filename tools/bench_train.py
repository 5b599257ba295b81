"""Step time of jaxmtl's train step vs a minimal hand-written `jax.jit` step.

Both steps use the same model (graphdef + params), the same batch and AdamW;
the baseline has no per-parameter μP scaling, no loss-combination hook and no
metrics beyond the loss. Prints one JSON line per case:

  {"case", "device", "params", "batch", "jaxmtl_ms", "baseline_ms", "overhead", "rounds",
   "tokens_per_s" | "examples_per_s", "step_gflop", "achieved_tflops", "peak_tflops",
   "peak_source", "mfu"}

Timing is interleaved: `--rounds` blocks of `--steps` steps of each side in turn; `overhead`
is the median over rounds of (jaxmtl block / baseline block). The jaxmtl step is the one the
loop compiles (it computes grad-norm / parameter / update RMS only on logged steps).

MFU uses the analytic FLOPs of `jaxmtl.train.loop.step_flops` (6 N per token plus causal
attention, halved) over the device's peak: the datasheet value on GPU/TPU
(metric_writers.PEAK_FLOPS), and on CPU the throughput of a 2048² f32 matmul measured in the
same run (a CPU has no meaningful datasheet peak for XLA).

  python tools/bench_train.py                      # CPU cases (quick)
  python tools/bench_train.py --case lm100m --dtype bfloat16   # ~100M LM, for a GPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxmtl import config as config_lib
from jaxmtl import tasks as tasks_lib
from jaxmtl.data import pipeline
from jaxmtl.metric_writers import peak_flops_per_device
from jaxmtl.train import loop

CASES = {
    # name: (overrides)
    "mlp": {"model.name": "mlp", "model.width": 1024, "model.depth": 4,
            "data.name": "jaxmtl_multidigits", "data.batch_size": 256},
    "lm_small": {"model.name": "transformer", "model.width": 256, "model.depth": 4,
                 "model.num_heads": 4, "data.name": "jaxmtl_bytes", "data.batch_size": 32},
    "lm100m": {"model.name": "transformer", "model.width": 768, "model.depth": 12,
               "model.num_heads": 12, "model.glu": False, "model.max_len": 1024,
               "data.name": "jaxmtl_bytes", "data.batch_size": 64},
}


def make_config(case: str, dtype: str) -> config_lib.ExperimentConfig:
  c = config_lib.default_config()
  c.optim.update(name="adamw", lr=1e-3, weight_decay=0.0)
  c.model.dtype = dtype
  config_lib.apply_overrides(c, CASES[case])
  return config_lib.experiment_config(c)


def baseline_step(graphdef, spec: tasks_lib.DataSpec, lr: float):
  """The minimal step: forward, summed task cross-entropies, grad, AdamW update."""
  opt = optax.adamw(lr, weight_decay=0.0)

  def step(params, opt_state, batch):
    def loss_fn(p):
      x, labels = tasks_lib.prepare_batch(spec, batch)
      logits = nnx.merge(graphdef, p)(x)
      return sum(optax.softmax_cross_entropy_with_integer_labels(
          logits[t.name].astype(jnp.float32), labels[t.name]).mean() for t in spec.tasks)
    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, upd), opt_state, loss
  return opt, jax.jit(step, donate_argnums=(0, 1))


def _block(fn, n: int) -> float:
  """Seconds per call of n calls, blocking at the end (the steps pipeline as in training)."""
  t = time.perf_counter()
  out = None
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / n


def _paired(ours, theirs, n: int, rounds: int) -> tuple[float, float, float]:
  """Interleaved timing: every round times a block of `ours`, then one of `theirs`.

  Returns (median ours s, median theirs s, median of the per-round ratios), so both sides of a
  ratio see the same machine state (other jobs, frequency) -- steadier than two long blocks.
  """
  for fn in (ours, theirs):
    for _ in range(2):
      jax.block_until_ready(fn())
  a, b = [], []
  for _ in range(rounds):
    a.append(_block(ours, n))
    b.append(_block(theirs, n))
  ratios = [x / y for x, y in zip(a, b)]
  return statistics.median(a), statistics.median(b), statistics.median(ratios)


def matmul_flops_per_s(n: int = 2048, reps: int = 5) -> float:
  """FLOP/s of a jitted [n, n] @ [n, n] f32 matmul: the CPU's practical peak for XLA."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  return 2 * n ** 3 / _block(lambda: f(a), reps)


def bench(case: str, dtype: str, steps: int, rounds: int = 5) -> dict:
  cfg = make_config(case, dtype)
  exp = loop.build(cfg, jax.devices()[:1])
  state = loop.init_state(exp)
  it = pipeline.train_iterator(exp.data, cfg.data.batch_size, exp.mesh)
  batch = next(it)
  step = loop.compile_train_step(exp, it.element_spec)
  holder = {"s": state}

  def run_ours():
    holder["s"], m = step(holder["s"], batch)
    return m["loss"]

  opt, base = baseline_step(exp.graphdef, exp.spec, cfg.optim.lr)
  params = jax.tree.map(jnp.copy, holder["s"].params)
  bh = {"p": params, "o": opt.init(params)}

  def run_base():
    bh["p"], bh["o"], loss = base(bh["p"], bh["o"], batch)
    return loss
  ours, theirs, ratio = _paired(run_ours, run_base, steps, rounds)

  flops = loop.step_flops(exp, it.element_spec)
  n_params = sum(x.size for x in jax.tree.leaves(holder["s"].params))
  out = {"case": case, "device": jax.devices()[0].device_kind, "dtype": dtype,
         "params": int(n_params), "batch": cfg.data.batch_size,
         "jaxmtl_ms": round(ours * 1e3, 3), "baseline_ms": round(theirs * 1e3, 3),
         "overhead": round(ratio, 4), "rounds": rounds}
  if jax.devices()[0].platform == "cpu":   # no datasheet peak: XLA's best matmul, measured now
    peak, source = matmul_flops_per_s(), "measured 2048^2 f32 matmul"
  else:
    peak, source = peak_flops_per_device(), "datasheet (metric_writers.PEAK_FLOPS)"
  out.update(step_gflop=round(flops / 1e9, 3), achieved_tflops=round(flops / ours / 1e12, 4),
             peak_tflops=round(peak / 1e12, 4), peak_source=source,
             mfu=round(flops / ours / peak, 4))
  if exp.spec.tasks[0].kind == "lm":
    out["tokens_per_s"] = round(cfg.data.batch_size * exp.spec.input_shape[0] / ours, 1)
  else:
    out["examples_per_s"] = round(cfg.data.batch_size / ours, 1)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--case", action="append", choices=sorted(CASES),
                  help="repeatable; default: mlp and lm_small")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
  ap.add_argument("--rounds", type=int, default=7, help="interleaved blocks per side")
  args = ap.parse_args()
  for case in args.case or ["mlp", "lm_small"]:
    print(json.dumps(bench(case, args.dtype, args.steps, args.rounds)), flush=True)


if __name__ == "__main__":
  main()
