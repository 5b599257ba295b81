"""Coordinate check (TP-V arXiv 2203.03466 App. D.1; microsoft/mup coord_check): μP passes, SP
(positive control) blows up, and a broken μP (hidden lr ÷ m²) is caught."""
import importlib.util
import pathlib

import numpy as np
import pytest

from jaxmtl import mup_tools

ROOT = pathlib.Path(__file__).resolve().parents[1]
WIDTHS = (64, 128, 256, 512)  # width 32 is too narrow: finite-width slopes reach 0.2


def _tool():
  spec = importlib.util.spec_from_file_location("coord_check", ROOT / "tools" / "coord_check.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("coord")
  res = _tool().run("mlp", WIDTHS, steps=4, lr=3e-3, batch_size=32, base_width=64,
                    seq_len=None, out=out, data_dir=data_dir)
  return res, out


def test_mup_passes_sp_blows_up_broken_fails(runs):
  res, _ = runs
  mup, sp, broken = res["muP"]["verdict"], res["SP"]["verdict"], res["muP hidden lr/m^2"]["verdict"]
  assert mup["passed"], mup["failures"]
  assert not mup["blowup"]
  assert sp["blowup"] and sp["max_slope"] > 0.3 and not sp["passed"]
  assert not broken["passed"]
  # The own-update term of hidden layers shrinks like 1/m when their lr is 1/m too small.
  for layer in ("layer_1", "layer_2"):
    assert broken["slopes"]["update"][layer][-1] < -0.7
    assert abs(mup["slopes"]["update"][layer][-1]) < 0.1
    assert sp["slopes"]["update"][layer][-1] > 0.5


def test_outputs_written(runs):
  _, out = runs
  for name in ("coord_mlp.json", "coord_mlp_size.png", "coord_mlp_update.png"):
    assert (out / name).stat().st_size > 1000


def test_sown_sizes_match_layer_walk(runs):
  """Sizes come from the model's sown nnx.Intermediate values; `change` uses a layer-by-layer
  walk of the same forward pass: at t = 0 both must describe the same activations."""
  res, _ = runs
  d = res["muP"]["data"]
  assert sorted(d["size"]) == sorted(d["change"]) == ["head_left", "head_right", "layer_0",
                                                      "layer_1", "layer_2"]
  for layer in d["change"]:
    assert all(row[0] == 0.0 for row in d["change"][layer])
  assert np.all(np.asarray(d["size"]["layer_0"]) > 0)


def test_fit_slopes_exact_power_law():
  w = [32, 64, 128]
  data = {"widths": w, "steps": 2,
          "size": {"a": [[3.0 * x ** 0.5, 2.0 / x] for x in w]},
          "change": {"a": [[0.0, 1.0] for _ in w]}, "update": {}}
  s = mup_tools.fit_slopes(data)
  np.testing.assert_allclose(s["size"]["a"], [0.5, -1.0], atol=1e-12)
  assert s["change"]["a"] == [0.0, 0.0]
  v = mup_tools.coord_verdict(data, from_step=1)
  assert not v["passed"] and v["failures"] == ["size/a@t=1: slope -1.000"]


def test_readout_may_shrink_but_not_grow():
  w = [32, 64, 128]
  shrink = {"widths": w, "steps": 3, "size": {"head_x": [[x ** -0.5] * 3 for x in w]}}
  assert mup_tools.coord_verdict(shrink)["passed"]
  grow = {"widths": w, "steps": 3, "size": {"head_x": [[x ** 0.5] * 3 for x in w]}}
  v = mup_tools.coord_verdict(grow)
  assert not v["passed"] and v["blowup"]


def test_bad_arguments():
  with pytest.raises(ValueError, match="tol"):
    mup_tools.coord_verdict({"widths": [1, 2], "steps": 1}, tol=0.5, blowup=0.3)
  with pytest.raises(ValueError, match="measure"):
    mup_tools.plot_coord({}, "/tmp/x.png", measure="bogus")
  with pytest.raises(ValueError, match="family"):
    _tool().family_config("resnet", "mup", 1e-3, 32)
