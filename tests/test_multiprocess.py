"""Two processes on localhost (4 simulated CPU devices each, one 8-device mesh) train exactly
like one process with 8 devices; processes that disagree on the config stop with a clear error.

Uses the real entry point: `python -m jaxmtl.cli.train --coordinator_address 127.0.0.1:PORT
--num_processes 2 --process_id i` (jax.distributed over loopback, gloo CPU collectives).
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from jaxmtl.checkpoint import Checkpointer
from jaxmtl.data.sources import get_source
from jaxmtl.train import loop
from jaxmtl.train.state import with_shardings
from tests.helpers import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "tiny.py"
MESH = {"mesh.shape": (2, 2, 2), "mesh.strategy": "fsdp_tp"}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two(workdir, data_dir, extra=((), ())):
  """Starts processes 0 and 1 together; returns [(returncode, stderr)] in process order."""
  for split in ("train", "test"):  # build the data once: concurrent first builds race
    get_source("jaxmtl_multidigits", split, data_dir)
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu", "JAXMTL_DATA_DIR": data_dir, "OPENBLAS_NUM_THREADS": "1"}
  procs = []
  for i in range(2):
    cmd = [sys.executable, "-m", "jaxmtl.cli.train", f"--config={CONFIG}",
           f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
           "--num_processes=2", f"--process_id={i}",
           *(f"--config.{k}={v}" for k, v in MESH.items()), *extra[i]]
    log = open(pathlib.Path(str(workdir) + f".stderr{i}"), "w+")  # files: pipes can deadlock
    procs.append((subprocess.Popen(cmd, env=env, cwd=ROOT, text=True,
                                   stdout=subprocess.DEVNULL, stderr=log), log))
  out = []
  for p, log in procs:
    try:
      p.wait(timeout=180)
    except subprocess.TimeoutExpired:
      for q, _ in procs:
        q.kill()
      raise
    log.seek(0)
    out.append((p.returncode, log.read()))
    log.close()
  return out


def _train_losses(path):
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_two_processes_match_one_process(data_dir, tmp_path):
  results = _run_two(tmp_path / "mp", data_dir)
  for i, (rc, err) in enumerate(results):
    assert rc == 0, f"process {i} failed:\n{err[-3000:]}"
  cfg = tiny_config(data_dir, **MESH)
  single = loop.train(cfg, tmp_path / "single")
  # Same data, same steps; cross-process all-reduces (gloo) sum in another order than the
  # in-process ones, so values agree to float32 rounding (measured: 1.5e-6 relative), not bits.
  mp_loss, one_loss = (_train_losses(tmp_path / d / "metrics.jsonl") for d in ("mp", "single"))
  assert mp_loss.keys() == one_loss.keys() == {5, 10, 15, 20}
  np.testing.assert_allclose(list(mp_loss.values()), list(one_loss.values()), rtol=1e-5)
  exp = loop.build(cfg)
  ck = Checkpointer(tmp_path / "mp" / "checkpoints", save_every=10, keep=3)
  step, state, _ = ck.restore_latest(with_shardings(exp.abstract, exp.shardings))
  ck.close()
  assert step == 20 and ck.all_steps() == [10, 20]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               jax.device_get(single["state"].params), jax.device_get(state.params))
  # Observability: one log per process with heartbeats naming the slowest process.
  for i in range(2):
    log = (tmp_path / "mp" / "logs" / f"process_{i}.log").read_text()
    assert f"start process={i}/2" in log and "devices=8 local_devices=4" in log
    assert f"heartbeat step=20 process={i} step_time_s=" in log and "slowest_process=" in log
    assert log.rstrip().endswith(f"end process={i}")


def test_processes_disagreeing_on_config_fail_clearly(data_dir, tmp_path):
  results = _run_two(tmp_path / "bad", data_dir, extra=((), ("--config.optim.lr=0.1",)))
  for i, (rc, err) in enumerate(results):
    assert rc != 0
    assert "processes disagree on the config" in err and "process(es) [1]" in err, err[-3000:]
