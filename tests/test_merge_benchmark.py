"""The merging benchmark pipeline: a tiny end-to-end run, stage caching, tables."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxmtl import config as config_lib
from jaxmtl.merging import benchmark as B

ROOT = pathlib.Path(__file__).resolve().parents[1]

TASKS = ("jaxmtl_suite_digits", "jaxmtl_suite_digits_perm")
# No "mtl": its stage (data.mixture + init_from) is the Quickstart's and the loop's own tests';
# here it would add a fourth compile-bound training run.
METHODS = ("pretrained", "individual", "weight_averaging", "ties", "adamerging_layer")
RERUN_METHODS = ("pretrained", "individual", "weight_averaging", "ties")
OVERRIDES = {"model.width": 32, "data.eval_batch_size": 512, "optim.warmup_steps": 2,
             "train.progress": False, "train.async_checkpoints": False}
BENCH = dict(tasks=TASKS, pretrain_data="jaxmtl_suite_digits", pretrain_steps=30,
             finetune_steps=15, finetune_batch_size=32, mtl_steps=15, probe_steps=50, seeds=(0,),
             methods=METHODS, adamerging_steps=4, diagnostic_lambdas=(0.0, 0.3),
             check_acceptance=True)

# The two runs go to one subprocess with 1 device, XLA's cheapest backend optimisation and a
# persistent compilation cache: they are compile-bound (3 training stages), and the second run
# (new merging options, the same cached stages) then compiles almost nothing.
_DRIVER = r"""
import json, pathlib, sys
import jax
work, xla_cache = pathlib.Path(sys.argv[1]), sys.argv[2]
jax.config.update("jax_compilation_cache_dir", xla_cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
from jaxmtl import config as config_lib
from jaxmtl.merging import benchmark as B
spec = json.loads(sys.argv[3])
def config(**bench):
  c = config_lib.load_config_file("configs/merge_benchmark.py:runlocal")
  config_lib.apply_overrides(c, spec["overrides"])
  bench = {**spec["bench"], "cache": str(work / "cache"), **bench}
  c.benchmark.update(**{k: tuple(v) if isinstance(v, list) else v for k, v in bench.items()})
  return c
logs = {"first": [], "again": []}
B.run(config(), work / "first", progress=False, log=logs["first"].append)
B.run(config(method_options={"ties": {"density": 0.5}}, methods=tuple(spec["rerun_methods"])),
      work / "again", progress=False, log=logs["again"].append)
(work / "logs.json").write_text(json.dumps(logs))
"""


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  work = tmp_path_factory.mktemp("mb")
  spec = {"overrides": {**OVERRIDES, "data.data_dir": data_dir}, "bench": BENCH,
          "rerun_methods": RERUN_METHODS}
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXMTL_DATA_DIR=data_dir,
             XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                       "--xla_backend_optimization_level=0")
  out = subprocess.run([sys.executable, "-c", _DRIVER, str(work), str(work / "xla_cache"),
                        json.dumps(spec, default=list)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  return work, json.loads((work / "logs.json").read_text())


def test_end_to_end_outputs(runs):
  root, logs = runs
  work, logs = root / "first", logs["first"]
  for f in ("results.md", "results.json", "bars.png", "lambdas.png", "entropy_vs_lambda.png",
            "suite.png"):
    assert (work / f).stat().st_size > 0, f
  saved = json.loads((work / "results.json").read_text())
  assert list(saved["methods"]) == list(METHODS)
  names = ["suite_digits", "suite_digits_perm"]
  for m, r in saved["methods"].items():
    assert set(r["mean"]) == set(names), m
    assert all(0.0 <= v <= 1.0 for v in r["mean"].values())
    assert all(v == 0.0 for v in r["std"].values())  # one seed
    np.testing.assert_allclose(r["avg_mean"], np.mean([r["mean"][n] for n in names]))
  # The individual models' accuracy equals the train loop's own final evaluation.
  for n in names:
    stage = next(root.glob(f"cache/finetune_{n}_s0-*/stage.json"))
    loop_acc = json.loads(stage.read_text())["eval"][f"{n}/accuracy"]
    np.testing.assert_allclose(saved["methods"]["individual"]["mean"][n], loop_acc, atol=1e-6)
  coef = saved["coefficients"]["adamerging_layer"]
  lam = np.asarray(coef["mean"])
  assert lam.shape == (2, len(coef["groups"])) and lam.min() >= 0 and lam.max() <= 1
  assert {"pretrained", "weight_averaging"} <= set(saved["acceptance"])
  sweep = saved["lambda_sweep"]
  assert sweep["lambda"] == [0.0, 0.3] and len(sweep["entropy"]) == 2
  # Task arithmetic at lambda = 0 is the pretrained backbone with the fine-tuned heads.
  assert all(np.isfinite(sweep["feature_norm"])) and 0 <= min(sweep["accuracy"]) <= 1
  table = (work / "results.md").read_text()
  assert "| Layer-wise AdaMerging |" in table and "| digits | digits_perm | avg |" in table
  assert sum("[train]" in line for line in logs) == 3  # pretrain, 2 fine-tunes


def test_rerun_reuses_every_stage(runs):
  root, logs = runs
  # A different merging option: no stage is retrained, the cached fine-tunes are merged again.
  assert not any("[train]" in line for line in logs["again"]), logs["again"]
  assert sum("[cached]" in line for line in logs["again"]) == 3
  first = json.loads((root / "first" / "results.json").read_text())["methods"]
  again = json.loads((root / "again" / "results.json").read_text())["methods"]
  assert list(again) == list(RERUN_METHODS)
  for m in ("pretrained", "individual", "weight_averaging"):
    assert again[m]["mean"] == first[m]["mean"], m


def test_stage_hash_ignores_bookkeeping_but_not_training():
  c = config_lib.load_config_file("configs/merge_benchmark.py:runlocal")
  base, _ = B.split_config(c)
  ref = B._stage_hash(B.stage_config(base, {}), "p")
  assert B._stage_hash(B.stage_config(base, {"train.progress": True, "train.log_every": 7,
                                             "train.init_from": "/x"}), "p") == ref
  assert B._stage_hash(B.stage_config(base, {"optim.lr": 0.5}), "p") != ref
  assert B._stage_hash(B.stage_config(base, {}), "q") != ref


def test_summary_mean_std_and_acceptance():
  per_seed = {"individual": {0: {"a": 0.9, "b": 0.7}, 1: {"a": 0.8, "b": 0.9}},
              "pretrained": {0: {"a": 0.5, "b": 0.5}, 1: {"a": 0.7, "b": 0.7}},
              "weight_averaging": {0: {"a": 0.8, "b": 0.7}, 1: {"a": 0.8, "b": 0.7}}}
  bc = B.BenchmarkConfig(tasks=("x", "y"), seeds=(0, 1))
  out = B.summarize(["a", "b"], list(per_seed), per_seed, {}, bc, {})
  ind = out["methods"]["individual"]
  np.testing.assert_allclose([ind["mean"]["a"], ind["std"]["a"]], [0.85, 0.05])
  np.testing.assert_allclose([ind["avg_mean"], ind["avg_std"]], [0.825, 0.025])
  np.testing.assert_allclose(out["acceptance"]["pretrained"]["gap"], 0.225)
  assert out["acceptance"]["pretrained"]["pass"]
  np.testing.assert_allclose(out["acceptance"]["weight_averaging"]["gap"], 0.075)
  assert not out["acceptance"]["weight_averaging"]["pass"]
  md = B.markdown(out)
  assert "| Individual | 85.0 ± 5.0 | 80.0 ± 10.0 | **82.5 ± 2.5** |" in md
  assert "FAIL" in md and "pass" in md


def test_bad_benchmark_block_is_rejected():
  c = config_lib.load_config_file("configs/merge_benchmark.py:runlocal")
  c.benchmark.methods = ("ties", "tiez")
  with pytest.raises(config_lib.ConfigError, match="tiez"):
    B.split_config(c)
  c = config_lib.load_config_file("configs/merge_benchmark.py:runlocal")
  c.benchmark.method_options = {"adamerging_layer": {"lr": 1.0}}
  with pytest.raises(config_lib.ConfigError, match="method_options"):
    B.split_config(c)
