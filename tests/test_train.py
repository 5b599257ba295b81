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


def test_param_stats_only_on_logged_steps(data_dir, tmp_path):
  """grad_norm / param_rms are computed on logged steps (finite there, NaN elsewhere, never
  written); update_rms only when train.log_update_rms."""
  cfg = tiny_config(data_dir, **{"train.steps": 7, "train.log_every": 3})
  exp = loop.build(cfg, jax.devices()[:1])
  from jaxmtl.data import pipeline
  it = pipeline.train_iterator(exp.data, cfg.data.batch_size, exp.mesh)
  step = loop.compile_train_step(exp, it.element_spec)
  state = loop.init_state(exp)
  seen = {}
  for s in range(1, 8):
    state, m = step(state, next(it))
    seen[s] = (float(m["grad_norm"]), float(m["param_rms"]))
    assert "update_rms" not in m
  for s, (g, p) in seen.items():
    logged = s % 3 == 0 or s == 7
    assert np.isfinite(g) == logged and np.isfinite(p) == logged, (s, g, p)
  rows = [json.loads(l) for l in (loop.train(cfg, tmp_path / "a") and
                                  (tmp_path / "a" / "metrics.jsonl")).read_text().splitlines()]
  train_rows = [r for r in rows if "train/grad_norm" in r]
  assert [r["step"] for r in train_rows] == [3, 6, 7]
  assert all(np.isfinite(r["train/grad_norm"]) and r["train/grad_norm"] > 0 for r in train_rows)
  cfg_u = tiny_config(data_dir, **{"train.steps": 3, "train.log_every": 3,
                                   "train.log_update_rms": True})
  loop.train(cfg_u, tmp_path / "b")
  rows = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
  assert any(r.get("train/update_rms", 0) > 0 for r in rows)
