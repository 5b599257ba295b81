"""Checkpoint safety: interrupted saves are never latest, corrupt steps fall back, device counts."""
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmtl.checkpoint import CheckpointError, Checkpointer
from jaxmtl.train import loop
from jaxmtl.train.state import with_shardings
from tests.helpers import tiny_config


def _tree(x):
  return {"w": jnp.arange(64.0) + x, "b": jnp.full((3,), x)}


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def _corrupt(step_dir):
  """Truncates every array data file of a finalised step (a torn or damaged write)."""
  files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
  assert files, "no orbax data files found to corrupt"
  for f in files:
    f.write_bytes(f.read_bytes()[:8])


def test_interrupted_save_is_never_latest(tmp_path):
  ck = Checkpointer(tmp_path, save_every=1, keep=5, async_save=False)
  ck.save(1, _tree(1.0), {"step": 1}, force=True)
  ck.close()
  # What a SIGKILL during an (async) save leaves behind: orbax's temporary directory,
  # half written and never renamed to its final name.
  tmp = tmp_path / "2.orbax-checkpoint-tmp-1700000000"
  shutil.copytree(tmp_path / "1", tmp)
  _corrupt(tmp)
  ck = Checkpointer(tmp_path, save_every=1, keep=5, async_save=False)
  assert ck.latest_step() == 1 and ck.all_steps() == [1]
  step, state, data = ck.restore_latest(_abstract(_tree(0.0)))
  assert (step, data) == (1, {"step": 1})
  np.testing.assert_array_equal(state["w"], _tree(1.0)["w"])
  ck.save(2, _tree(2.0), {"step": 2}, force=True)  # the step can be written again
  ck.close()


_KILLED_WRITER = r"""
import sys, jax.numpy as jnp
from jaxmtl.checkpoint import Checkpointer
ck = Checkpointer(sys.argv[1], save_every=1, keep=5, async_save=True)
ck.save(1, {"w": jnp.full((8,), 1.0), "big": jnp.zeros((64 << 20,))}, {"step": 1}, force=True)
ck.wait()
ck.save(2, {"w": jnp.full((8,), 2.0), "big": jnp.ones((64 << 20,))}, {"step": 2}, force=True)
print("saving", flush=True)  # the async write of step 2 is now in flight
import time; time.sleep(60)
"""


def test_sigkill_during_async_save_never_leaves_an_unreadable_latest(tmp_path):
  """A real SIGKILL while orbax writes step 2 (256 MB) in the background."""
  import os
  import signal
  import subprocess
  import sys
  proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)],
                          stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})
  assert proc.stdout.readline().strip() == "saving"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait(timeout=30)
  ck = Checkpointer(tmp_path, save_every=1, keep=5, async_save=False)
  target = {"w": jax.ShapeDtypeStruct((8,), jnp.float32),
            "big": jax.ShapeDtypeStruct((64 << 20,), jnp.float32)}
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
      a.shape, a.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), target)
  step, state, data = ck.restore_latest(target)  # whichever step is listed must be whole
  assert step in (1, 2) and data == {"step": step}
  np.testing.assert_array_equal(state["w"], np.full((8,), float(step)))
  assert float(state["big"][-1]) == step - 1
  ck.close()


def test_corrupt_step_names_step_and_falls_back(tmp_path, caplog):
  ck = Checkpointer(tmp_path, save_every=1, keep=5, async_save=False)
  for s in (1, 2, 3):
    ck.save(s, _tree(float(s)), {"step": s}, force=True)
  ck.close()
  _corrupt(tmp_path / "3")
  _corrupt(tmp_path / "2")
  ck = Checkpointer(tmp_path, save_every=1, keep=5, async_save=False)
  with pytest.raises(CheckpointError, match=r"checkpoint at step 3 in .* could not be restored"):
    ck.restore(3, _abstract(_tree(0.0)))
  with caplog.at_level(logging.WARNING, logger="jaxmtl.checkpoint"):
    step, state, _ = ck.restore_latest(_abstract(_tree(0.0)))
  assert step == 1
  np.testing.assert_array_equal(state["b"], np.full((3,), 1.0))
  assert "step 3" in caplog.text and "step 2" in caplog.text and "falling back" in caplog.text
  assert ck.all_steps() == [1]
  assert (tmp_path / "3.corrupt").is_dir() and (tmp_path / "2.corrupt").is_dir()
  _corrupt(tmp_path / "1")
  with pytest.raises(CheckpointError, match=r"no readable checkpoint among steps \[1\]"):
    ck.restore_latest(_abstract(_tree(0.0)))
  ck.close()


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """A 20-step tiny run on 8 devices (checkpoints at 10 and 20) and its final params."""
  workdir = tmp_path_factory.mktemp("trained")
  cfg = tiny_config(data_dir)
  return cfg, workdir, jax.device_get(loop.train(cfg, workdir)["state"].params)


def test_training_resumes_from_previous_good_checkpoint(trained, tmp_path):
  cfg, src, straight = trained
  shutil.copytree(src, tmp_path, dirs_exist_ok=True)
  _corrupt(tmp_path / "checkpoints" / "20")
  resumed = loop.train(cfg, tmp_path)  # restores 10 (20 is unreadable), trains 10 -> 20
  jax.tree.map(np.testing.assert_array_equal, straight, jax.device_get(resumed["state"].params))
  assert (tmp_path / "checkpoints" / "20.corrupt").is_dir()
  assert (tmp_path / "checkpoints" / "20").is_dir()


def test_restore_onto_fewer_devices(trained, data_dir):
  _, src, straight = trained
  other = tiny_config(data_dir, **{"mesh.shape": (1, -1, 1), "mesh.strategy": "fsdp"})
  for n in (4, 2):
    exp = loop.build(other, jax.devices()[:n])
    ck = Checkpointer(src / "checkpoints", save_every=10, keep=3)
    step, state, data = ck.restore_latest(with_shardings(exp.abstract, exp.shardings))
    ck.close()
    assert step == 20 and data["step"] == 20
    assert all(len(x.sharding.device_set) == n for x in jax.tree.leaves(state.params))
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))
    jax.tree.map(np.testing.assert_array_equal, straight, jax.device_get(state.params))
