"""tools/mtl_benchmark.py: method names, a resumable runlocal benchmark, Δm%, docs update."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(rel, name):
  spec = importlib.util.spec_from_file_location(name, ROOT / rel)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


TOOL = _load("tools/mtl_benchmark.py", "mtl_benchmark_tool")
CONFIG = _load("configs/mtl_multidigits.py", "mtl_multidigits_cfg")


def test_every_method_of_the_full_config_is_a_valid_run():
  from jaxmtl import config as config_lib
  c = CONFIG.get_config()
  runs = TOOL.plan(c.benchmark)
  assert len({r[0] for r in runs}) == 2 + len(c.benchmark.methods)
  assert len(runs) == 3 * (2 + len(c.benchmark.methods))
  base = c.copy_and_resolve_references()
  with base.unlocked():
    del base["benchmark"]
  families = set()
  for name, family, seed, over in runs[::3]:
    run_c = base.copy_and_resolve_references()
    config_lib.apply_overrides(run_c, {**over, "seed": seed})
    config_lib.experiment_config(run_c)  # every method is a valid experiment
    families.add(family)
  assert families == set(TOOL.FAMILIES)
  assert TOOL.method_overrides("mean@params") == ("params", {"mtl.aggregator": "mean"})
  assert TOOL.method_overrides("mgda@ghost") == ("ghost", {"mtl.aggregator": "mgda",
                                                          "mtl.jacobian": "ghost"})
  assert TOOL.method_overrides("mean")[1] == {"mtl.weighting": "mean"}
  for bad in ("graddrop@vmap", "uw@features", "upgard@params"):
    with pytest.raises(ValueError, match="unknown benchmark method"):
      TOOL.method_overrides(bad)


def test_runlocal_benchmark_resumes_and_reports_delta_m(tmp_path, data_dir):
  c = CONFIG.get_config("runlocal")
  c.data.data_dir = data_dir
  c.train.update(steps=6, log_every=2, eval_every=6, checkpoint_every=6)
  c.optim.total_steps = 6
  c.benchmark.methods = ("upgrad@gramian",)
  summary = TOOL.run_all(c, tmp_path, progress=False)
  rows = {r["method"]: r for r in summary["rows"]}
  assert list(rows) == ["stl_left", "stl_right", "upgrad@gramian"]
  ev = {m: json.loads((tmp_path / "runs" / m / "seed_0" / "results.json").read_text())["eval"]
        for m in rows}
  assert set(ev["stl_left"]) == {"left/loss", "left/accuracy"}  # single-task: one head
  stl = {t: ev[f"stl_{t}"][f"{t}/accuracy"] for t in ("left", "right")}
  expect = 100 / 2 * sum((stl[t] - ev["upgrad@gramian"][f"{t}/accuracy"]) / stl[t]
                         for t in stl)
  np.testing.assert_allclose(rows["upgrad@gramian"]["delta_m"][0], expect, rtol=1e-9)
  assert rows["upgrad@gramian"]["left/accuracy"][0] == ev["upgrad@gramian"]["left/accuracy"]
  assert np.isfinite(rows["upgrad@gramian"]["step_ms"][0])
  md = (tmp_path / "benchmark.md").read_text()
  assert "| upgrad@gramian | gramian |" in md and "Δm%" in md
  assert (tmp_path / "benchmark.png").stat().st_size > 0
  # Resume: finished runs are skipped (their files stay as they are).
  stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("results.json")}
  again = TOOL.run_all(c, tmp_path, progress=False)
  assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
  assert [r["delta_m"] for r in again["rows"] if "delta_m" in r] == [
      rows["upgrad@gramian"]["delta_m"]]
  # A changed config meets a run directory of another config: stop instead of mixing.
  c.optim.lr = 0.5
  with pytest.raises(SystemExit, match="different config"):
    TOOL.run_all(c, tmp_path, progress=False)
  # The docs block is replaced between its markers, with the plot beside it.
  doc = tmp_path / "docs" / "mtl.md"
  doc.parent.mkdir()
  doc.write_text(f"# MTL\nbefore\n{TOOL.BEGIN}\nold table\n{TOOL.END}\nafter\n")
  TOOL.update_docs(doc, tmp_path, "python tools/mtl_benchmark.py --config X")
  text = doc.read_text()
  assert "old table" not in text and "before" in text and "after" in text
  assert "| upgrad@gramian | gramian |" in text and "python tools/mtl_benchmark.py" in text
  assert (tmp_path / "docs" / "img" / "mtl_multidigits.png").exists()
