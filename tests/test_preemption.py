"""Preemption: SIGTERM saves a checkpoint and exits 75; the restarted run ends bit-identical."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from jaxmtl import config as config_lib
from jaxmtl.checkpoint import Checkpointer
from jaxmtl.train import loop
from jaxmtl.train.state import with_shardings

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "tiny.py"
STEPS = 150
OVERRIDES = {"train.steps": STEPS, "train.log_every": 2, "train.eval_every": STEPS,
             "train.checkpoint_every": 1000, "train.async_checkpoints": True}


def _cmd(workdir):
  return [sys.executable, "-m", "jaxmtl.cli.train", f"--config={CONFIG}", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]


def _env(data_dir, cache):
  # Same device count as this test process, so the reference run below matches bit for bit;
  # a persistent compilation cache lets the restarted run skip compiling again.
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
          "JAX_PLATFORMS": "cpu", "JAXMTL_DATA_DIR": data_dir, "OPENBLAS_NUM_THREADS": "1",
          "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _wait_for_metrics(proc, path, timeout=120.0):
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if path.exists() and path.read_text().count("\n") >= 2:
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended (rc={proc.returncode}) before SIGTERM:\n"
                           + proc.stderr.read()[-3000:])
    time.sleep(0.02)
  proc.kill()
  raise AssertionError("no metrics within the timeout")


def test_sigterm_saves_exits_75_and_resumes_bit_exact(data_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_cmd(workdir), env=_env(data_dir, tmp_path / "jit_cache"), cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  _wait_for_metrics(proc, workdir / "metrics.jsonl")
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == loop.PREEMPTED_EXIT_CODE, err[-3000:]
  ck = Checkpointer(workdir / "checkpoints", save_every=1000, keep=3)
  saved = ck.latest_step()
  ck.close()
  assert saved is not None and 0 < saved < STEPS, (saved, err[-2000:])
  assert f"checkpoint saved at step {saved}" in err

  done = subprocess.run(_cmd(workdir), env=_env(data_dir, tmp_path / "jit_cache"), cwd=ROOT, text=True,
                        capture_output=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]

  c = config_lib.load_config_file(str(CONFIG))
  config_lib.apply_overrides(c, {**OVERRIDES, "data.data_dir": data_dir})
  cfg = config_lib.experiment_config(c)
  reference = jax.device_get(loop.train(cfg, tmp_path / "reference")["state"].params)
  exp = loop.build(cfg)
  ck = Checkpointer(workdir / "checkpoints", save_every=1000, keep=3)
  step, state, data = ck.restore_latest(with_shardings(exp.abstract, exp.shardings))
  ck.close()
  assert step == STEPS and data["step"] == STEPS
  jax.tree.map(np.testing.assert_array_equal, reference, jax.device_get(state.params))
