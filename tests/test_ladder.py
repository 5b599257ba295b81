"""Model ladders: sizes and budgets by hand, μP overrides, resume/skip, collect -> jaxmtl-fit,
launcher jobs, and the tiny study end to end."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxmtl import config as config_lib
from jaxmtl import launch as L
from jaxmtl.scaling import flops as FL
from jaxmtl.scaling import ladder as LD

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEQ = 128  # jaxmtl_bytes windows


def _base(**model):
  c = config_lib.default_config()
  c.model.update(name="transformer", width=32, depth=1, num_heads=4, **model)
  c.data.update(name="jaxmtl_bytes", batch_size=8)
  c.optim.update(name="adam", lr=2.0 ** -6, schedule="warmup_cosine", warmup_steps=5,
                 total_steps=100)
  return c


def _spec(**kw):
  return LD.ladder_config(dict(dict(widths=(32, 64, 96), aspect_ratio=40.0, base_width=32,
                                    tokens_per_param=(10.0, 20.0)), **kw))


def test_rungs_by_hand():
  spec = _spec()
  rungs = LD.rungs(_base(), spec, seq_len=SEQ)
  assert [(r.width, r.depth, r.num_heads) for r in rungs] == [(32, 1, 4), (64, 2, 4), (96, 2, 4)]
  # w32, 1 block: attn 4*32^2, MLP 2*32*128 + biases 128 + 32, 2 LayerNorms 4*32; final norm
  # 2*32; head 32*256 + 256 (non-embedding); input table 256*32.
  blocks = 4 * 32 ** 2 + 2 * 32 * 128 + 160 + 4 * 32
  assert rungs[0].n == blocks + 64 + 32 * 256 + 256
  assert rungs[0].params.total == rungs[0].n + 256 * 32
  m = config_lib.experiment_config(_base()).model
  assert rungs[0].flops_per_token == FL.model_flops_per_token(m, SEQ)
  with pytest.raises(ValueError, match="divisible by num_heads"):
    LD.rungs(_base(), _spec(widths=(30,)), seq_len=SEQ)
  with pytest.raises(ValueError, match="even head dim"):
    LD.rungs(_base(), _spec(widths=(12,)), seq_len=SEQ)


def test_expand_budgets_steps_and_mup_overrides():
  base, spec = _base(), _spec(holdout_widths=(128,), holdout_budgets=(40.0,), min_steps=5)
  runs = LD.expand(base, spec, seq_len=SEQ)
  assert [r.name for r in runs] == ["w32_d1_tpp10", "w32_d1_tpp20", "w64_d2_tpp10",
                                    "w64_d2_tpp20", "w96_d2_tpp10", "w96_d2_tpp20",
                                    "w128_d3_tpp40"]
  assert [r.role for r in runs].count("holdout") == 1
  for r in runs:
    want = r.budget * r.rung.n / (8 * SEQ)
    assert r.steps == max(5, round(want))
    assert r.tokens == r.steps * 8 * SEQ and r.compute == r.rung.flops_per_token * r.tokens
    o = r.overrides
    assert o["mup.name"] == "mup" and o["model.base_width"] == 32  # one lr for every width
    assert o["optim.total_steps"] == o["train.steps"] == r.steps == o["train.eval_every"]
    assert o["model.width"] == r.rung.width and o["model.depth"] == r.rung.depth
  cfg = config_lib.experiment_config(LD.run_config(base, runs[3]))
  assert (cfg.model.width, cfg.model.depth, cfg.model.base_width) == (64, 2, 32)
  assert cfg.mup.name == "mup" and cfg.optim.lr == 2.0 ** -6 and cfg.train.steps == runs[3].steps
  # IsoFLOP budgets: D = C / (FLOPs per token), exact or 6N.
  iso = LD.expand(base, _spec(tokens_per_param=(), flop_budgets=(1e12,), min_steps=1),
                  seq_len=SEQ)
  for r in iso:
    assert abs(r.compute / 1e12 - 1) < 8 * SEQ * r.rung.flops_per_token / 1e12
  six = LD.expand(base, _spec(tokens_per_param=(), flop_budgets=(1e12,), compute="6nd",
                              min_steps=1), seq_len=SEQ)
  assert all(abs(r.compute_6nd / 1e12 - 1) < 0.05 for r in six)
  # depth-μP records its base depth; a sweep crosses every run.
  dm = LD.expand(base, _spec(parametrization="depth_mup"), seq_len=SEQ)
  assert {r.overrides["mup.base_depth"] for r in dm} == {1}
  sw = LD.expand(base, spec, sweep=L.parse_sweep("optim.lr=1e-3,3e-3"), seq_len=SEQ)
  assert len(sw) == 2 * len(runs) and sw[1].name == "w32_d1_tpp10,optim.lr=3e-3"
  assert sw[1].overrides["optim.lr"] == "3e-3"
  assert config_lib.experiment_config(LD.run_config(base, sw[1])).optim.lr == 3e-3


@pytest.mark.parametrize("kw,msg", [
    (dict(tokens_per_param=(), flop_budgets=()), "exactly"),
    (dict(flop_budgets=(1e12,)), "exactly"),
    (dict(depths=(1, 2)), "one depth per width"),
    (dict(head_dim=16), "parametrization='sp'"),
    (dict(parametrization="ntk"), "valid choices"),
    (dict(holdout_widths=(128,)), "one budget per holdout"),
    (dict(widths=(32, 32)), "twice"),
])
def test_bad_ladders_name_the_key(kw, msg):
  with pytest.raises(ValueError, match=msg):
    LD.expand(_base(), _spec(**kw), seq_len=SEQ)


def _fake_train(calls):
  """A stand-in for loop.train: writes what a finished run leaves (config, results)."""
  def train(cfg, workdir):
    calls.append(workdir.name)
    (workdir / "checkpoints" / str(cfg.train.steps)).mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_lib.to_json(cfg))
    n = FL.model_param_count(cfg.model).non_embedding
    d = cfg.train.steps * cfg.data.batch_size * SEQ
    bpb = 1.0 + 300.0 / n ** 0.4 + 900.0 / d ** 0.35  # a Chinchilla-shaped loss
    (workdir / "results.json").write_text(json.dumps(
        {"eval": {"lm/bpb": bpb, "lm/loss": bpb * np.log(2)}, "train": {"loss": 2.0}}))
  return train


def test_run_local_skips_finished_resumes_partial_and_collects(tmp_path):
  base = _base()
  spec = _spec(widths=(32, 64, 96, 128), tokens_per_param=(5.0, 10.0, 20.0),
               holdout_widths=(160,), holdout_budgets=(20.0,))
  runs = LD.expand(base, spec, seq_len=SEQ)
  calls = []
  # An interrupted run: checkpoints but no results.
  (tmp_path / runs[0].name / "checkpoints" / "3").mkdir(parents=True)
  what = LD.run_local(base, runs, tmp_path, progress=False, train_fn=_fake_train(calls),
                      log=lambda m: None)
  assert what[runs[0].name] == "resumed" and what[runs[1].name] == "trained"
  assert calls == [r.name for r in runs]
  again = LD.run_local(base, runs, tmp_path, progress=False, train_fn=_fake_train(calls),
                       log=lambda m: None)
  assert set(again.values()) == {"skipped"} and len(calls) == len(runs)
  assert LD.status(tmp_path / runs[0].name, runs[0].steps + 1) == "partial"  # longer budget
  rows = LD.collect(tmp_path)
  assert len(rows) == len(runs) and rows[-1]["role"] == "holdout"
  for r, run in zip(sorted(rows, key=lambda r: r["name"]), sorted(runs, key=lambda r: r.name)):
    assert (r["N"], r["D"], r["C"]) == (run.rung.n, run.tokens, pytest.approx(run.compute))
  rec = json.loads((tmp_path / runs[0].name / LD.RUN_RECORD).read_text())
  assert rec["seconds"] >= 0 and rec["N"] == runs[0].rung.n
  csv_path = LD.write_csv([r for r in rows if r["role"] == "fit"], tmp_path / "results.csv")
  from jaxmtl.cli import fit as fit_cli
  assert fit_cli.main(["--data", str(csv_path), "--form", "chinchilla", "--out",
                       str(tmp_path / "fit"), "--grid-stride", "500"]) == 0
  got = json.loads((tmp_path / "fit" / "fit_chinchilla.json").read_text())
  assert got["n_points"] == len(runs) - 1
  from jaxmtl.scaling import laws
  fit_rows = [r for r in rows if r["role"] == "fit"]
  pred = laws.chinchilla(np.array([r["N"] for r in fit_rows]), np.array([r["D"] for r in fit_rows]),
                         *(got["params"][k] for k in ("A", "B", "E", "alpha", "beta")))
  np.testing.assert_allclose(pred, [r["loss"] for r in fit_rows], rtol=2e-2)  # 9 starts


def test_launcher_ladder_jobs(tmp_path, capsys):
  spec_file = tmp_path / "lad.py"
  spec_file.write_text(
      "from jaxmtl.config import default_config\n"
      "def get_config(arg=''):\n"
      "  c = default_config()\n"
      "  c.model.update(name='transformer', width=32, depth=1, num_heads=4)\n"
      "  c.data.update(name='jaxmtl_bytes', batch_size=8)\n"
      "  return c\n"
      "def ladder(arg=''):\n"
      "  return dict(widths=(32, 64), aspect_ratio=40.0, tokens_per_param=(10.0,))\n")
  spec = importlib_launch()
  assert spec.main(["local", "--ladder", "--config", str(spec_file), "--workdir", "/w",
                    "--set", "data.batch_size=16", "--dry-run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 and lines[1].startswith(
      f"python -m jaxmtl.cli.train --config={spec_file} --workdir=/w/w64_d2_tpp10 "
      "--config.data.batch_size=16 --config.model.width=64 --config.model.depth=2")
  assert "--config.mup.name=mup" in lines[1] and "--config.model.base_width=32" in lines[1]
  steps = round(10 * FL.param_count(n_layers=2, d_model=64, n_heads=4, d_ff=256, vocab_size=256,
                                    glu=False, norm_bias=True, mlp_bias=True,
                                    head_bias=True).non_embedding / (16 * SEQ))
  assert f"--config.train.steps={steps}" in lines[1]
  jobs = L.ladder_jobs(str(spec_file), "/shared/w")
  script = L.slurm_script(str(spec_file), jobs[0][0], nodes=1, gpus_per_node=1, job_name="j")
  assert "--workdir=/shared/w/w32_d1_tpp10" in script and "--distributed" in script
  with pytest.raises(ValueError, match="no ladder"):
    L.ladder_jobs(str(ROOT / "configs" / "quickstart.py"), "/w")


def importlib_launch():
  import importlib.util
  s = importlib.util.spec_from_file_location("launch_cli_l", ROOT / "launch" / "launch.py")
  m = importlib.util.module_from_spec(s)
  s.loader.exec_module(m)
  return m


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path, data_dir):
  """tools/scaling_study.py on configs/ladder_lm.py:runlocal: 2 widths x 3 budgets + a held-out
  run, fit, prediction, plots. One device, and XLA's cheapest backend optimisation: these runs
  are compile-bound (a persistent cache serves the runs of a width after its first)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1 "
             "--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu", JAXMTL_DATA_DIR=data_dir)
  out = subprocess.run([sys.executable, str(ROOT / "tools" / "scaling_study.py"), "--config",
                        str(ROOT / "configs" / "ladder_lm.py") + ":runlocal", "--workdir",
                        str(tmp_path / "s"), "--bootstrap", "0", "--grid-stride", "500",
                        "--no-progress"], env=env, capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = list(__import__("csv").DictReader(open(tmp_path / "s" / "results.csv")))
  assert len(rows) == 7 and [r["role"] for r in rows].count("holdout") == 1
  assert all(np.isfinite(float(r[k])) and float(r[k]) > 0 for r in rows
             for k in ("N", "D", "C", "loss"))
  res = json.loads((tmp_path / "s" / "results.json").read_text())
  (q,) = res["holdout"]
  assert np.isfinite(q["predicted"]) and q["error"] == pytest.approx(q["predicted"] - q["actual"])
  for png in ("loss_vs_compute.png", "isoflop.png"):
    assert (tmp_path / "s" / png).stat().st_size > 10_000
  assert "held-out run" in (tmp_path / "s" / "results.md").read_text()
