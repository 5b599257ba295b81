"""Training loop: results, resume bit-exactness, restore onto another mesh, NaN stop."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxmtl.train import loop
from tests.helpers import tiny_config


def _params(res):
  return jax.device_get(res["state"].params)


def test_train_writes_outputs(data_dir, tmp_path):
  cfg = tiny_config(data_dir, **{"train.plot": True})
  res = loop.train(cfg, tmp_path)
  for f in ("config.json", "metrics.jsonl", "results.md", "results.json", "curves.png"):
    assert (tmp_path / f).exists(), f
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any("eval/left/accuracy" in r for r in rows)
  assert rows[0]["train/loss"] > rows[-2]["train/loss"] if "train/loss" in rows[-2] else True
  assert set(res["eval"]) >= {"left/accuracy", "right/accuracy", "left/loss"}
  assert json.loads((tmp_path / "config.json").read_text())["model"]["width"] == 32


def test_resume_is_bit_exact(data_dir, tmp_path):
  cfg = tiny_config(data_dir)
  straight = _params(loop.train(cfg, tmp_path / "a"))
  half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=10))
  loop.train(half, tmp_path / "b")
  resumed = _params(loop.train(cfg, tmp_path / "b"))
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)


def test_restore_onto_other_mesh(data_dir, tmp_path):
  cfg = tiny_config(data_dir, **{"train.steps": 10})
  first = _params(loop.train(cfg, tmp_path))
  other = tiny_config(data_dir, **{"train.steps": 10, "mesh.shape": (2, 2, 2),
                                   "mesh.strategy": "fsdp_tp"})
  exp = loop.build(other)
  from jaxmtl.checkpoint import Checkpointer
  from jaxmtl.train.state import with_shardings
  ck = Checkpointer(tmp_path / "checkpoints", save_every=10, keep=2)
  state, data = ck.restore(10, with_shardings(exp.abstract, exp.shardings))
  ck.close()
  assert data["step"] == 10
  k = state.params["layers"][1]["kernel"]
  assert len(k.sharding.device_set) == 8
  jax.tree.map(np.testing.assert_array_equal, first, jax.device_get(state.params))


def test_nan_loss_stops_naming_step_and_task(data_dir, tmp_path):
  cfg = tiny_config(data_dir, **{"optim.lr": 1e30, "optim.name": "sgd",
                                 "optim.schedule": "constant"})
  with pytest.raises(loop.NonFiniteLoss, match=r"step \d+ in task\(s\) \['(left|right)'"):
    loop.train(cfg, tmp_path)
