"""train.init_from: fine-tuning starts from another run's (or a file's) matching parameters."""
import json

import jax
import numpy as np
import pytest

from jaxmtl.merging import io as ckpt_io
from jaxmtl.train import loop
from jaxmtl.train import state as state_lib
from jaxmtl.train import warm_start
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
  """A finished 2-task run (left and right digit heads)."""
  workdir = tmp_path_factory.mktemp("pre")
  out = loop.train(tiny_config(data_dir, **{"train.steps": 10, "train.eval_every": 10}),
                   workdir)
  return workdir, jax.device_get(out["state"].params)


def _target(cfg):
  exp = loop.build(cfg, jax.devices()[:1])
  return exp, state_lib.with_shardings(exp.abstract, exp.shardings).params


def test_finetune_run_starts_from_the_pretrained_backbone(pretrained, data_dir, tmp_path):
  src, pre = pretrained
  cfg = tiny_config(data_dir, **{"data.tasks": ("left",), "train.init_from": str(src),
                                 "train.steps": 2, "train.eval_every": 2})
  exp, target = _target(cfg)
  values, report = warm_start.load_matching(src, target)
  assert report.step == 10 and "heads/heads/right/kernel" in report.unused
  assert report.fresh == ()
  params = warm_start.apply(jax.device_get(loop.init_state(exp).params), values)
  jax.tree.map(np.testing.assert_array_equal, params["layers"], pre["layers"])
  np.testing.assert_array_equal(params["heads"]["heads"]["left"]["kernel"],
                                pre["heads"]["heads"]["left"]["kernel"])
  # Through the loop: the report is written, and a second call resumes instead of re-loading.
  workdir = tmp_path / "ft"
  loop.train(cfg, workdir)
  written = json.loads((workdir / "init_from.json").read_text())
  assert "layers/0/kernel" in written["loaded"]
  (workdir / "init_from.json").unlink()
  loop.train(cfg, workdir)
  assert not (workdir / "init_from.json").exists()


def test_params_file_source_and_exclude(pretrained, data_dir, tmp_path):
  _, pre = pretrained
  path = tmp_path / "merged.npz"
  ckpt_io.save(path, jax.tree.map(np.asarray, {"layers": {str(k): v for k, v in
                                                          pre["layers"].items()},
                                               "heads": pre["heads"]}))
  _, target = _target(tiny_config(data_dir))
  values, report = warm_start.load_matching(path, target, exclude=r"heads/.*")
  assert report.step is None and set(report.fresh) == {
      "heads/heads/left/bias", "heads/heads/left/kernel", "heads/heads/right/bias",
      "heads/heads/right/kernel"}
  np.testing.assert_array_equal(values["layers/1/kernel"], pre["layers"][1]["kernel"])


def test_shape_mismatch_and_nothing_to_load_are_clear_errors(pretrained, data_dir, tmp_path):
  src, _ = pretrained
  _, wide = _target(tiny_config(data_dir, **{"model.width": 48}))
  with pytest.raises(ValueError, match=r"layers/0/kernel: source \(256, 32\) vs model \(256, 48\)"):
    warm_start.load_matching(src, wide)
  with pytest.raises(ValueError, match="no parameter of the model"):
    warm_start.load_matching(src, wide, exclude=".*")
  with pytest.raises(ValueError, match="does not exist"):
    warm_start.load_matching(tmp_path / "nope", wide)
