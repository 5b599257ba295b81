"""Same model on 1, 2, 4, 8 devices: throughput per device and every parameter's sharding.

Each device count runs in its own subprocess (XLA_FLAGS sets the simulated CPU device
count before jax starts; on a GPU/TPU host pass --real to use the first n real devices).
Prints one JSON line per device count:

  {"devices", "mesh", "strategy", "platform", "steps_per_s", "examples_per_s",
   "examples_per_s_per_device", "compile_s", "loss", "shardings": {path: "PartitionSpec"}}

On simulated CPU devices this checks correctness (same loss on every count, shardings as
intended), not speed: they share the same cores.

  python tools/bench_scaling.py --devices 1,2,4,8 --strategy fsdp --steps 20
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(n: int, strategy: str, steps: int, width: int, batch: int, real: bool) -> dict:
  import jax
  from jaxmtl import config as config_lib
  from jaxmtl.data import pipeline
  from jaxmtl.train import loop
  c = config_lib.default_config()
  c.model.update(name="mlp", width=width, depth=4, activation="relu")
  c.data.update(name="jaxmtl_multidigits", batch_size=batch)
  c.mesh.update(shape=(1, -1, 1) if strategy in ("fsdp", "dp") else (1, 1, -1),
                strategy=strategy, min_shard_fraction=1.0)  # the input layer stays whole
  cfg = config_lib.experiment_config(c)
  devices = jax.devices()[:n]
  if len(devices) < n:
    raise ValueError(f"asked for {n} devices, have {len(jax.devices())}")
  exp = loop.build(cfg, devices)
  state = loop.init_state(exp)
  it = pipeline.train_iterator(exp.data, batch, exp.mesh)
  t = time.perf_counter()
  step = loop.compile_train_step(exp, it.element_spec).lower(state, it.element_spec).compile()
  compile_s = time.perf_counter() - t
  state, m = step(state, next(it))
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, next(it))
  loss = float(jax.device_get(m["loss"]))
  dt = time.perf_counter() - t
  shardings = {jax.tree_util.keystr(p): str(x.sharding.spec)
               for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
  return {"devices": n, "mesh": dict(exp.mesh.shape), "strategy": strategy,
          "platform": devices[0].platform, "steps_per_s": steps / dt,
          "examples_per_s": steps * batch / dt, "examples_per_s_per_device": steps * batch / dt / n,
          "compile_s": compile_s, "loss": loss, "shardings": shardings}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--devices", default="1,2,4,8")
  p.add_argument("--strategy", default="fsdp", choices=["dp", "fsdp", "tp", "fsdp_tp"])
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--width", type=int, default=1024)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--real", action="store_true", help="use real devices (no simulated CPUs)")
  p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child mode
  a = p.parse_args()
  if a.one is not None:
    print(json.dumps(measure(a.one, a.strategy, a.steps, a.width, a.batch, a.real)), flush=True)
    return
  for n in (int(x) for x in a.devices.split(",")):
    env = dict(os.environ)
    if not a.real:
      env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
    argv = [sys.executable, __file__, f"--one={n}", f"--strategy={a.strategy}",
            f"--steps={a.steps}", f"--width={a.width}", f"--batch={a.batch}"]
    out = subprocess.run(argv + (["--real"] if a.real else []), env=env, text=True,
                         capture_output=True)
    if out.returncode:
      sys.exit(f"{n} devices failed:\n{out.stderr[-3000:]}")
    print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
  main()
