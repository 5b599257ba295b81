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


@pytest.mark.parametrize("arg", ["", "mlp", "lm", "runlocal", "lm_runlocal"])
def test_config_builds(arg):
  c = _load("configs/mutransfer.py", "mt_cfg").get_config(arg)
  with c.unlocked():
    del c["sweep"]
  cfg = config_lib.experiment_config(c)
  assert cfg.optim.name == "adam"


def test_config_rejects_unknown_arg():
  with pytest.raises(ValueError, match="runlocal"):
    _load("configs/mutransfer.py", "mt_cfg").get_config("bogus")


def test_micro_sweep_resumes(tmp_path, data_dir):
  c = _load("configs/mutransfer.py", "mt_cfg").get_config("runlocal")
  c.data.data_dir = data_dir
  c.train.steps = 3
  c.sweep.update(widths=(32,), log2_lrs=(-9, -7, -5), params=("mup",), avg_last=2)
  tool = _load("tools/mutransfer.py", "mt_tool")
  out = tool.sweep(c, tmp_path, progress=False)
  files = sorted((tmp_path / "runs").glob("*.json"))
  assert [f.name for f in files] == ["mup_w32_lr-5_s0.json", "mup_w32_lr-7_s0.json",
                                     "mup_w32_lr-9_s0.json"]
  losses = out["params"]["mup"]["losses"]["32"]
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
