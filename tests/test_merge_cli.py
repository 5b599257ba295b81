"""Tests for the jaxmtl-merge CLI: --config and --mergekit recipes over tmp checkpoints."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import yaml

import jaxmtl.merging as M
from jaxmtl.cli import common
from jaxmtl.cli import merge as cli
from jaxmtl.merging import io

ROOT = pathlib.Path(__file__).resolve().parents[1]
_ENABLE_CACHE = common.enable_compilation_cache   # before the fixture below replaces it
CONFIG = str(ROOT / "configs" / "merge.py")


@pytest.fixture(autouse=True)
def cache_calls(monkeypatch):
  """The CLI's persistent compilation cache, recorded instead of switched on: jax's cache
  setting is process-wide and would carry over to every later test
  (test_compilation_cache_subprocess switches it on for real)."""
  calls = []
  monkeypatch.setattr(common, "enable_compilation_cache",
                      lambda path, secs=0.0: calls.append((str(path), secs)) or True)
  return calls


@pytest.fixture
def ckpts(tmp_path):
  r = np.random.default_rng(0)
  pre = {"blocks": {"0": {"mlp": {"fc1": {"kernel": r.normal(size=(8, 16)).astype(np.float32),
                                           "bias": r.normal(size=(16,)).astype(np.float32)}}}},
         "head": {"kernel": r.normal(size=(16, 3)).astype(np.float32)}}
  flat = io.flatten(pre)
  fts = [{k: v + 0.1 * r.normal(size=v.shape).astype(np.float32) for k, v in flat.items()}
         for _ in range(3)]
  io.save(tmp_path / "base.safetensors", flat)
  paths = []
  for i, f in enumerate(fts):
    p = tmp_path / f"m{i}" / "model.safetensors"  # mergekit-style model directory
    p.parent.mkdir()
    io.save(p, f)
    paths.append(p)
  return tmp_path, flat, fts, paths


def _load(p):
  return io.load(p, nested=False)


def test_config_ties(ckpts, capsys):
  d, pre, fts, paths = ckpts
  out = d / "out.safetensors"
  rc = cli.main(["jaxmtl-merge", f"--config={CONFIG}:ties",
                 f"--config.pretrained={d / 'base.safetensors'}",
                 f"--config.finetuned={','.join(map(str, paths))}",
                 f"--config.output={out}", "--config.options.density=0.3",
                 "--config.exclude=head/.*", "--config.progress=False"])
  assert rc == 0
  ref = M.ties(pre, fts, density=0.3, exclude="head/.*")
  got = _load(out)
  for k in pre:
    np.testing.assert_allclose(got[k], np.asarray(ref[k]), rtol=1e-6, atol=1e-7)
  rep = json.loads((d / "out.safetensors.report.json").read_text())
  assert rep["method"] == "ties" and rep["options"]["density"] == 0.3
  assert rep["leaves"]["head/kernel"]["merged"] is False
  assert set(rep["timings"]) >= {"threshold", "sign", "total"}
  assert 0 < rep["leaves"]["blocks/0/mlp/fc1/kernel"]["nonzero_fraction"] < 1
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == "ties"


def test_config_dare_seed_and_none_option(ckpts):
  d, pre, fts, paths = ckpts
  out = d / "dare.npz"
  cli.main(["x", f"--config={CONFIG}:dare", f"--config.pretrained={d / 'base.safetensors'}",
            f"--config.finetuned={','.join(map(str, paths))}", f"--config.output={out}",
            "--config.options.rescale=none", "--config.seed=3", "--config.progress=False"])
  rep = json.loads((d / "dare.npz.report.json").read_text())
  assert rep["options"]["rescale"] is None and rep["options"]["seed"] == 3
  assert _load(out)["head/kernel"].shape == (16, 3)


def _recipe(d, paths, method, params=None, model_params=None, **extra):
  r = {"merge_method": method, "base_model": "base.safetensors",
       "models": [{"model": str(p.parent.relative_to(d)),
                   "parameters": {"weight": 1.0, **(model_params or {})}} for p in paths],
       **extra}
  if params is not None:
    r["parameters"] = params
  f = d / f"{method}.yaml"
  f.write_text(yaml.safe_dump(r))
  return f


@pytest.mark.parametrize("method,params,mparams,expect", [
  ("task_arithmetic", {"lambda": 0.5}, {}, lambda pre, fts: M.task_arithmetic(
    pre, fts, scaling=0.5)),
  ("ties", {"normalize": True, "int8_mask": True}, {"density": 0.4},
   lambda pre, fts: M.ties(pre, fts, density=0.4, trim_scope="tensor", topk_rule="mergekit")),
  ("ties", {"normalize": False}, {"density": 0.4},
   lambda pre, fts: M.ties(pre, fts, density=0.4, trim_scope="tensor", topk_rule="mergekit",
                           merge="sum")),
  ("linear", None, {}, lambda pre, fts: M.weight_average(pre, fts)),
  ("breadcrumbs", None, {"density": 0.5, "gamma": 0.1},
   lambda pre, fts: M.breadcrumbs(pre, fts, density=0.5, gamma=0.1, scope="tensor")),
])
def test_mergekit_recipes(ckpts, method, params, mparams, expect):
  d, pre, fts, paths = ckpts
  f = _recipe(d, paths, method, params, mparams, dtype="float32")
  out = d / f"{method}.safetensors"
  cli.main(["x", f"--mergekit={f}", f"--output={out}", "--noprogress"])
  ref = expect(pre, fts)
  got = _load(out)
  for k in pre:
    np.testing.assert_allclose(got[k], np.asarray(ref[k]), rtol=1e-6, atol=1e-7, err_msg=k)
  rep = json.loads(pathlib.Path(f"{out}.report.json").read_text())
  assert rep["mergekit"]["merge_method"] == method
  assert any("dtype" in n for n in rep["notes"])


def test_mergekit_dare_ties_maps_options(ckpts):
  d, _, _, paths = ckpts
  spec = cli.from_mergekit(yaml.safe_load(_recipe(
    d, paths, "dare_ties", {"normalize": True}, {"density": 0.7}).read_text()), str(d))
  assert spec["method"] == "dare"
  assert spec["options"] == {"scaling": 1.0, "drop_rate": pytest.approx(0.3),
                             "rescale": "mergekit", "sign": "mass", "merge": "mean"}


def test_mergekit_errors(ckpts):
  d, _, _, paths = ckpts
  base = yaml.safe_load(_recipe(d, paths, "ties", None, {"density": 0.5}).read_text())
  with pytest.raises(ValueError, match="valid: .*'dare_ties'"):
    cli.from_mergekit({**base, "merge_method": "slerp"}, str(d))
  with pytest.raises(ValueError, match="tokenizer_source.*valid"):
    cli.from_mergekit({**base, "tokenizer_source": "base"}, str(d))
  with pytest.raises(ValueError, match="unsupported parameters \\['foo'\\]; valid"):
    cli.from_mergekit({**base, "parameters": {"foo": 1}}, str(d))
  m = [dict(x) for x in base["models"]]
  m[0] = {"model": m[0]["model"], "parameters": {"weight": 1.0, "density": 0.9}}
  with pytest.raises(ValueError, match="'density' must be equal"):
    cli.from_mergekit({**base, "models": m}, str(d))
  with pytest.raises(ValueError, match="does not exist"):
    cli.from_mergekit({**base, "base_model": "nope.safetensors"}, str(d))
  with pytest.raises(ValueError, match="exactly one"):
    cli.main(["x"])
  with pytest.raises(ValueError, match="--output"):
    cli.main(["x", f"--mergekit={d / 'ties.yaml'}"])


def _ties_argv(d, paths, out, *extra):
  return ["x", f"--config={CONFIG}:ties", f"--config.pretrained={d / 'base.safetensors'}",
          f"--config.finetuned={','.join(map(str, paths))}", f"--config.output={out}",
          "--config.progress=False", *extra]


def test_compilation_cache_flag(ckpts, cache_calls, monkeypatch, tmp_path):
  d, _, _, paths = ckpts
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  import jax
  if jax.config.jax_compilation_cache_dir:   # the user's own cache wins over the default
    pytest.skip("JAX_COMPILATION_CACHE_DIR is set in this environment")
  cli.main(_ties_argv(d, paths, d / "a.npz"))
  assert cache_calls == [(str(tmp_path / "xdg" / "jaxmtl" / "xla"), 0.0)]
  cli.main(_ties_argv(d, paths, d / "b.npz", f"--compilation_cache={tmp_path / 'mine'}"))
  assert cache_calls[-1][0] == str(tmp_path / "mine")
  cli.main(_ties_argv(d, paths, d / "c.npz", "--compilation_cache="))
  assert len(cache_calls) == 2   # '' turns it off


def test_compilation_cache_subprocess(ckpts, tmp_path):
  """The real cache, in a fresh process: the in-memory merge's programs are written to the
  directory, and the merge equals the in-process one."""
  d, pre, fts, paths = ckpts
  cache = tmp_path / "xla"
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  # in memory: the streaming path is numpy and compiles nothing
  argv = _ties_argv(d, paths, d / "sub.npz", f"--compilation_cache={cache}",
                    "--config.streaming=false")[1:]
  r = subprocess.run([sys.executable, "-m", "jaxmtl.cli.merge", *argv], env=env, cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert any(cache.iterdir())
  ref = M.ties(pre, fts, density=0.2)
  got = _load(d / "sub.npz")
  for k in pre:
    np.testing.assert_allclose(got[k], np.asarray(ref[k]), rtol=1e-6, atol=1e-7)


def test_enable_compilation_cache_unwritable(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  assert not _ENABLE_CACHE(blocker / "xla")   # mkdir fails: a warning, jax left alone
  assert "no compilation cache" in capsys.readouterr().err
