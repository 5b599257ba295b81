"""Scaling-law fits: published numbers (Epoch Chinchilla, Porian) and synthetic recovery."""
import csv

import numpy as np
import pytest

from jaxmtl.scaling import fit as F
from jaxmtl.scaling import laws


def _epoch_data(shared_data):
  rows = list(csv.DictReader(open(shared_data / "scaling" / "svg_extracted_data.csv")))
  n = np.array([float(r["Model Size"]) for r in rows])
  c = np.array([float(r["Training FLOP"]) for r in rows])
  loss = np.array([float(r["loss"]) for r in rows])
  keep = F.epoch_outlier_mask(loss, 5)
  return n[keep], (c / (6 * n))[keep], loss[keep], c[keep]


def _sig3(x, y):
  return float(f"{x:.3g}") == float(f"{y:.3g}")


def test_epoch_grid_shape_and_filter():
  g = F.epoch_grid()
  assert g.shape == (4500, 5)
  np.testing.assert_array_equal(g[0], [0, 0, -1, 0, 0])
  assert F.epoch_outlier_mask(np.arange(10.0), 5).sum() == 5


def test_chinchilla_grid_fit_reproduces_epoch(shared_data):
  # Besiroglu et al. 2024 (arXiv 2404.10102): A=477.84, B=2143.86, E=1.8172, a=0.3473, b=0.3672.
  n, d, loss, _ = _epoch_data(shared_data)
  assert len(n) == 240
  res = F.fit_chinchilla(n, d, loss, starts=F.epoch_grid()[::20])
  want = dict(A=477.84, B=2143.86, E=1.8172, alpha=0.3473, beta=0.3672)
  for k, v in want.items():
    assert _sig3(res.params[k], v), (k, res.params[k], v)


def test_chinchilla_mle_fit_reproduces_epoch(shared_data):
  n, d, loss, _ = _epoch_data(shared_data)
  res = F.fit_chinchilla(n, d, loss, method="mle")
  want = dict(A=482.01, B=2085.43, E=1.82, alpha=0.3478, beta=0.3658)
  for k, v in want.items():
    assert _sig3(res.params[k], v), (k, res.params[k], v)


def test_chinchilla_bootstrap_seeded(shared_data):
  n, d, loss, _ = _epoch_data(shared_data)
  r1 = F.fit_chinchilla(n, d, loss, starts=F.epoch_grid()[::100], n_bootstrap=3, seed=1)
  r2 = F.fit_chinchilla(n, d, loss, starts=F.epoch_grid()[::100], n_bootstrap=3, seed=1)
  np.testing.assert_allclose(r1.samples, r2.samples)
  assert r1.samples.shape == (3, 5)
  assert all(np.isfinite(v) and v > 0 for v in r1.stderr.values())
  # Refitting each replicate from the full-data optimum instead of Hoffmann et al.'s fit.
  r3 = F.fit_chinchilla(n, d, loss, starts=F.epoch_grid()[::900], n_bootstrap=3, seed=1,
                        bootstrap_start="fit")
  assert all(np.isfinite(v) and v > 0 for v in r3.stderr.values())


def test_isoflop_on_epoch_data_matches_chinchilla_approach2(shared_data):
  # Hoffmann et al. approach 2: a = 0.49, b = 0.51.
  _, _, _, _ = _epoch_data(shared_data)
  rows = list(csv.DictReader(open(shared_data / "scaling" / "svg_extracted_data.csv")))
  n = np.array([float(r["Model Size"]) for r in rows])
  c = np.array([float(r["Training FLOP"]) for r in rows])
  loss = np.array([float(r["loss"]) for r in rows])
  res = F.fit_isoflop(n, loss, c)
  assert round(res["a"], 2) == 0.49 and round(res["b"], 2) == 0.51
  assert abs(res["a"] + res["b"] - 1) < 1e-9


@pytest.mark.parametrize("config,expected", [
    ("rw|base|long|kaplan|kaplan|train", 0.8353),
    ("rw|base|long|kaplan|standard|val", 0.7065),
    ("rw|base|short|kaplan|standard|val", 0.6020),
    ("rw|base|short|chinchilla|standard|val", 0.5715),
    ("rw|tuned|short|const|standard|val", 0.4969),
])
def test_porian_exponents(shared_data, config, expected):
  rows = [r for r in csv.DictReader(open(shared_data / "scaling" / "porian" /
                                         "porian_rw_optimal_pairs.csv"))
          if r["config"] == config]
  num = lambda k: np.array([float(r[k]) if r[k] else np.nan for r in rows])  # noqa: E731
  res = F.fit_porian_exponent(num("flops"), num("n"), num("n_star_std"))
  assert round(res["a"], 4) == expected


def test_chinchilla_recovers_synthetic_params():
  rng = np.random.default_rng(0)
  n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 60))
  d = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 60))
  true = dict(A=400.0, B=1500.0, E=1.7, alpha=0.34, beta=0.30)
  loss = laws.chinchilla(n, d, **true)
  res = F.fit_chinchilla(n, d, loss, starts=F.epoch_grid()[::150])
  for k, v in true.items():
    assert res[k] == pytest.approx(v, rel=1e-3)


def test_power_law_and_offset_recovery():
  x = np.geomspace(1e16, 1e20, 12)
  y = laws.power_law(x, 3e-3, -0.55)  # N* = k C^a
  res = F.fit_power_law(x, y)
  assert res["a"] == pytest.approx(0.55, rel=1e-9) and res["k"] == pytest.approx(3e-3, rel=1e-6)
  y2 = laws.power_law(x, 50.0, 0.12, 1.8)
  r2 = F.fit_power_law(x, y2, offset=True)
  assert r2["alpha"] == pytest.approx(0.12, rel=1e-3) and r2["E"] == pytest.approx(1.8, rel=1e-3)


def test_kaplan_nd_recovery():
  rng = np.random.default_rng(1)
  n = np.exp(rng.uniform(np.log(1e6), np.log(1e9), 40))
  d = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 40))
  loss = laws.kaplan_nd(n, d, 8.8e13, 5.4e13, 0.076, 0.095)
  res = F.fit_kaplan(loss, n=n, d=d, form="nd")
  assert res["alpha_N"] == pytest.approx(0.076, rel=1e-2)
  assert res["alpha_D"] == pytest.approx(0.095, rel=1e-2)


def test_loss_to_loss_recovery():
  lx = np.linspace(2.6, 4.0, 20)
  ly = laws.loss_to_loss(lx, K=1.3, kappa=0.9, E_x=1.8, E_y=1.5)
  res = F.fit_loss_to_loss(lx, ly, E_x=1.8, E_y=1.5, n_bootstrap=2)
  assert res["K"] == pytest.approx(1.3, rel=1e-3) and res["kappa"] == pytest.approx(0.9, rel=1e-3)


def test_isoflop_recovers_closed_form():
  true = dict(A=400.0, B=1500.0, E=1.7, alpha=0.34, beta=0.30)
  ns, ls, cs = [], [], []
  for c in np.geomspace(1e18, 1e21, 5):
    n_opt, _ = laws.chinchilla_compute_optimal(c, true["A"], true["B"], true["alpha"],
                                               true["beta"])
    n = n_opt * np.geomspace(0.5, 2.0, 9)
    ns.append(n)
    cs.append(np.full_like(n, c))
    ls.append(laws.chinchilla(n, c / (6 * n), **true))
  res = F.fit_isoflop(np.concatenate(ns), np.concatenate(ls), np.concatenate(cs))
  assert res["a"] == pytest.approx(0.30 / 0.64, abs=0.01)


def test_compute_optimal_closed_form():
  p = dict(A=406.4, B=410.7, alpha=0.34, beta=0.28)
  co = F.compute_optimal(p, np.array([1e21, 1e23]))
  np.testing.assert_allclose(6 * co.n_opt * co.d_opt, [1e21, 1e23], rtol=1e-12)
  # dL/dN = 0 along C = 6ND: alpha A / N^alpha = beta B / D^beta.
  np.testing.assert_allclose(p["alpha"] * p["A"] / co.n_opt ** p["alpha"],
                             p["beta"] * p["B"] / co.d_opt ** p["beta"], rtol=1e-10)
  with pytest.raises(ValueError, match="missing"):
    F.compute_optimal({"A": 1.0}, 1e20)


def test_olmo_two_step_synthetic():
  rng = np.random.default_rng(2)
  n = np.exp(rng.uniform(np.log(1e8), np.log(2e9), 24))
  d = n * rng.choice([20, 40, 100, 200], 24)
  tl = laws.chinchilla(n, d, A=50.0, B=300.0, E=0.6, alpha=0.25, beta=0.3)
  acc = laws.olmo_sigmoid(tl, a=-0.6, k=-8.0, L0=1.0, b=0.85)
  res = F.fit_olmo_two_step(n, d, tl, acc, starts=F.epoch_grid()[::150])
  # (a, k, b) and (-a, -k, a + b) describe the same sigmoid: compare curves, not signs.
  p = res.params
  np.testing.assert_allclose(laws.olmo_sigmoid(tl, p["a"], p["k"], p["L0"], p["b"]), acc,
                             atol=1e-6)
  assert abs(p["k"]) == pytest.approx(8.0, rel=1e-3) and p["E"] == pytest.approx(0.6, rel=5e-2)


def test_bad_input_messages():
  with pytest.raises(ValueError, match="loss"):
    F.fit_chinchilla([1e8] * 8, [1e9] * 8, [2.0] * 7 + [-1.0])
  with pytest.raises(ValueError, match="at least"):
    F.fit_chinchilla([1e8] * 3, [1e9] * 3, [2.0] * 3)
  with pytest.raises(ValueError, match="method"):
    F.fit_chinchilla([1e8] * 8, [1e9] * 8, [2.0] * 8, method="bfgs")
  with pytest.raises(ValueError, match="bootstrap_start"):
    F.fit_chinchilla([1e8] * 8, [1e9] * 8, [2.0] * 8, bootstrap_start="grid")
  with pytest.raises(ValueError, match="optimizer"):
    F.fit_chinchilla([1e8] * 8, [1e9] * 8, [2.0] * 8, optimizer="adam")


def _sweep_rows(shared_data, data):
  rows = [r for r in csv.DictReader(open(shared_data / "scaling" / "loss-to-loss" / "sweep.csv"))
          if r["data"] == data]
  num = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
  return num("params"), num("tokens"), num("val_loss")


@pytest.mark.parametrize("data,kaplan", [("starcoder", False), ("proof-pile-2", True)])
def test_loss_to_loss_scaling_fits_reproduce_opt_params(shared_data, data, kaplan):
  # Brandfonbrener et al. 2024 (arXiv 2411.12925) fit each pretraining set's val loss with the
  # Chinchilla form (kaplan=False) or Kaplan's with an offset (kaplan=True) from 16 starts,
  # mean Huber (delta 1e-3) on log loss; their E's are the offsets of the loss-to-loss law.
  ref = next(r for r in csv.DictReader(open(shared_data / "scaling" / "loss-to-loss" /
                                            "opt_params_data.csv"))
             if r["data"] == data and r["loss_name"] == "val_loss"
             and r["kaplan"] == str(kaplan))
  n, d, loss = _sweep_rows(shared_data, data)
  grid = F.loss_to_loss_grid()
  if kaplan:
    res = F.fit_kaplan(loss, n=n, d=d, form="nd_offset", starts=grid[:, [0, 1, 3, 4, 2]],
                       reduce="mean", optimizer="BFGS")
    got = [res[k] for k in ("N_c", "D_c", "E", "alpha_N", "alpha_D")]
    pred = laws.kaplan_nd(*_extrapolation(shared_data, data)[:2], *got[:2], *got[3:], got[2])
  else:
    res = F.fit_chinchilla(n, d, loss, starts=grid, reduce="mean", optimizer="BFGS")
    got = [res[k] for k in ("A", "B", "E", "alpha", "beta")]
    pred = laws.chinchilla(*_extrapolation(shared_data, data)[:2], *got)
  for k, g in zip(("A", "B", "E", "alpha", "beta"), got):
    assert _sig3(g, float(ref[k])), (k, g, ref[k])
  assert res.objective == pytest.approx(float(ref["loss"]), rel=1e-4)
  # ... and predict their held-out 3.3B model (1e21 FLOPs) as they did.
  assert pred == pytest.approx(float(ref["extrap_pred"]), rel=1e-4)
  assert _extrapolation(shared_data, data)[2] == pytest.approx(float(ref["extrap_loss"]))


def _extrapolation(shared_data, data):
  r = next(r for r in csv.DictReader(open(shared_data / "scaling" / "loss-to-loss" /
                                          "extrapolation.csv")) if r["data"] == data)
  return float(r["params"]), float(r["tokens"]), float(r["val_loss"])


def test_mean_reduction_has_the_sum_minimiser():
  # "mean" used to stop early (scipy's absolute tolerances at objectives << 1).
  rng = np.random.default_rng(3)
  n = np.exp(rng.uniform(np.log(1e7), np.log(1e9), 30))
  d = np.exp(rng.uniform(np.log(1e9), np.log(1e11), 30))
  loss = laws.chinchilla(n, d, A=300.0, B=900.0, E=1.9, alpha=0.33, beta=0.3)
  loss = loss * np.exp(rng.normal(0, 1e-3, 30))
  starts = F.epoch_grid()[::450]
  s, m = (F.fit_chinchilla(n, d, loss, starts=starts, reduce=r) for r in ("sum", "mean"))
  for k in s.params:
    assert m[k] == pytest.approx(s[k], rel=1e-6)
  assert m.objective == pytest.approx(s.objective / 30)
