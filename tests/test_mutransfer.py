"""μTransfer sweep analysis (TP-V arXiv 2203.03466 Fig. 1): optimum per width, parabola
interpolation in log2(lr), and a resumable micro-sweep through tools/mutransfer.py."""
import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

from jaxmtl import config as config_lib
from jaxmtl import mup_tools

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(path, name):
  spec = importlib.util.spec_from_file_location(name, ROOT / path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_optimal_lr_parabola_is_exact():
  x = np.arange(-12, -4)
  r = mup_tools.optimal_lr(2.0 ** x, (x + 8.3) ** 2 + 1.0)
  assert r["grid"] == 2.0 ** -8 and not r["edge"]
  assert math.isclose(math.log2(r["interp"]), -8.3, abs_tol=1e-9)
  assert r["loss"] == pytest.approx(1.09)


def test_optimal_lr_edge_and_divergence():
  lrs = [2.0 ** k for k in (-3, -2, -1)]
  r = mup_tools.optimal_lr(lrs, [1.0, 2.0, float("nan")])
  assert r["edge"] and r["grid"] == r["interp"] == 2.0 ** -3
  r = mup_tools.optimal_lr(lrs, [float("inf")] * 3)
  assert math.isnan(r["grid"]) and r["edge"]
  with pytest.raises(ValueError, match="increasing"):
    mup_tools.optimal_lr(lrs[::-1], [1.0, 0.5, 1.0])
  with pytest.raises(ValueError, match="equal length"):
    mup_tools.optimal_lr(lrs, [1.0])


def test_transfer_summary_shift():
  lrs = 2.0 ** np.arange(-10, -2)
  losses = {64: (np.log2(lrs) + 5) ** 2, 512: (np.log2(lrs) + 8) ** 2}
  s = mup_tools.transfer_summary(lrs, [64, 512], losses)
  assert s["shift_grid"] == 8.0
  assert s["per_width"][512]["grid"] == 2.0 ** -8


def test_transfer_summary_regret_and_edge():
  lrs = 2.0 ** np.arange(-6, 0)
  x = np.log2(lrs)
  losses = {64: (x + 4) ** 2, 256: (x + 2) ** 2 + 1.0}
  s = mup_tools.transfer_summary(lrs, [64, 256], losses)
  # The base width's optimum (2^-4) costs width 256 (2^-2 optimal) (-4 + 2)^2 = 4.
  assert s["regret"] == {64: 0.0, 256: 4.0}
  assert not s["edge"] and s["shift_grid"] == 4.0
  assert mup_tools.transfer_summary(lrs, [64], {64: x})["edge"]


def test_transfer_verdict():
  lrs = 2.0 ** np.arange(-10, -2)
  x = np.log2(lrs)
  widths = [128, 256, 512, 1024]
  def summary(optima):
    return mup_tools.transfer_summary(lrs, widths, {w: (x - o) ** 2 for w, o in zip(widths, optima)})
  ok = mup_tools.transfer_verdict({"sp": summary([-4, -5, -6, -7]), "mup": summary([-5, -5, -4, -5])})
  assert ok["passed"] and ok["shift_grid"] == {"sp": 8.0, "mup": 2.0}
  bad = mup_tools.transfer_verdict({"sp": summary([-4, -4, -5, -5]), "mup": summary([-6, -5, -4, -4])})
  assert not bad["passed"]
  assert bad["reasons"] == ["sp: optimum moves 2x < 4x", "mup: optimum moves 4x > 2x"]
  edge = mup_tools.transfer_verdict({"sp": summary([-4, -5, -6, -10]), "mup": summary([-5] * 4)})
  assert not edge["passed"] and "edge" in edge["reasons"][0]


@pytest.mark.parametrize("arg", ["", "mlp", "mlp_sgd", "lm", "runlocal", "lm_runlocal"])
def test_config_builds(arg):
  c = _load("configs/mutransfer.py", "mt_cfg").get_config(arg)
  with c.unlocked():
    del c["sweep"]
  cfg = config_lib.experiment_config(c)
  assert cfg.optim.name == ("sgd" if arg == "mlp_sgd" else "adam")
  assert cfg.mup.optimizer == cfg.optim.name  # μP rules follow the optimizer


def test_config_rejects_unknown_arg():
  with pytest.raises(ValueError, match="runlocal"):
    _load("configs/mutransfer.py", "mt_cfg").get_config("bogus")


def test_micro_sweep_resumes(tmp_path, data_dir):
  c = _load("configs/mutransfer.py", "mt_cfg").get_config("runlocal")
  c.data.data_dir = data_dir
  c.train.steps = 3
  c.sweep.update(widths=(32,), log2_lrs=(-9, -7, -5), params=("sp", "mup"), avg_last=2)
  tool = _load("tools/mutransfer.py", "mt_tool")
  out = tool.sweep(c, tmp_path, progress=False)
  files = sorted((tmp_path / "runs").glob("*.json"))
  assert [f.name for f in files] == [f"{p}_w32_lr{l}_s0.json" for p in ("mup", "sp")
                                     for l in (-5, -7, -9)]
  # At the base width μP is SP: the sweep reuses the SP runs.
  assert json.loads(files[0].read_text())["same_as"] == "sp_w32_lr-5_s0.json"
  losses = out["params"]["mup"]["losses"]["32"]
  assert losses == out["params"]["sp"]["losses"]["32"]
  assert all(0 < v < 10 for v in losses)
  assert out["params"]["mup"]["per_width"][32]["grid"] == 2.0 ** [-9, -7, -5][int(np.argmin(losses))]
  # Resume: an existing run file is reused, not recomputed.
  f = tmp_path / "runs" / "mup_w32_lr-7_s0.json"
  rec = json.loads(f.read_text())
  rec["loss"] = 0.125
  f.write_text(json.dumps(rec))
  again = tool.sweep(c, tmp_path, progress=False)
  assert again["params"]["mup"]["losses"]["32"][1] == 0.125
  assert (tmp_path / "curves.png").exists() and "| mup | 32 |" in (tmp_path / "results.md").read_text()
  assert set(again["verdict"]) >= {"passed", "reasons", "shift_grid"}
  # A run reads the batches of its seed once per sweep (run_batches): the same numbers as a
  # run that reads its own.
  run_c = c.copy_and_resolve_references()
  with run_c.unlocked():
    del run_c["sweep"]
  cfg = tool._run_config(run_c, "mup", 32, -5.0, 0, 32)
  with pytest.raises(ValueError, match="need 3 batches"):
    mup_tools.train_losses(cfg, mup_tools.run_batches(cfg, 2))
  np.testing.assert_allclose(np.mean(mup_tools.train_losses(cfg)[-2:]),
                             out["params"]["mup"]["losses"]["32"][2], rtol=1e-6)


def test_same_as_sp_only_where_the_model_is_sp():
  tool = _load("tools/mutransfer.py", "mt_tool")
  for arg, over in (("runlocal", {}), ("lm_runlocal", {}), ("lm_runlocal", {"mup.attn_mode": "mup"})):
    c = _load("configs/mutransfer.py", "mt_cfg").get_config(arg)
    with c.unlocked():
      del c["sweep"]
    config_lib.apply_overrides(c, over)
    sp = tool._run_config(c, "sp", 32, -8.0, 0, 32)
    assert tool.same_as_sp(tool._run_config(c, "mup", 32, -8.0, 0, 32), sp) == (not over)
    assert not tool.same_as_sp(tool._run_config(c, "mup", 64, -8.0, 0, 32),
                               tool._run_config(c, "sp", 64, -8.0, 0, 32))
    assert not tool.same_as_sp(tool._run_config(c, "mup", 32, -7.0, 0, 32), sp)
